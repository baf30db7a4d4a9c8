package translate

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
)

// unknownField walks a protobuf-encoded Kubernetes object against its Go type (the
// numbers in the fields' `protobuf:"..."` tags) and returns the path of the first field
// number the type does not have, "" if there is none. Kubernetes' generated decoders
// skip such fields silently, so an object written by a newer apiserver would lose them
// if it were decoded and encoded again; Apply refuses to rewrite it instead. Types
// without protobuf tags (metav1.Time, resource.Quantity: their own encodings) are opaque.
func unknownField(b []byte, t reflect.Type, path string) (string, error) {
	fields := protoFields(t)
	if fields == nil {
		return "", nil
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", fmt.Errorf("%s: %w", path, protowire.ParseError(n))
		}
		b = b[n:]
		ft, known := fields[num]
		if !known {
			return path + "." + strconv.Itoa(int(num)), nil
		}
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return "", fmt.Errorf("%s.%d: %w", path, num, protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType {
			continue
		}
		sub := path + "." + ft.name
		if ft.typ.Kind() == reflect.Map {
			// a map entry: key = 1, value = 2
			entry := reflect.StructOf([]reflect.StructField{
				{Name: "K", Type: ft.typ.Key(), Tag: `protobuf:"bytes,1,opt,name=key"`},
				{Name: "V", Type: ft.typ.Elem(), Tag: `protobuf:"bytes,2,opt,name=value"`},
			})
			if p, err := unknownField(v, entry, sub); p != "" || err != nil {
				return p, err
			}
			continue
		}
		if elem := messageType(ft.typ); elem != nil {
			if p, err := unknownField(v, elem, sub); p != "" || err != nil {
				return p, err
			}
		}
	}
	return "", nil
}

type protoField struct {
	name string
	typ  reflect.Type
}

var protoFieldCache sync.Map // reflect.Type -> map[protowire.Number]protoField

// protoFields maps a struct's protobuf field numbers to its fields; nil when t is not a
// struct with protobuf tags.
func protoFields(t reflect.Type) map[protowire.Number]protoField {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	if m, ok := protoFieldCache.Load(t); ok {
		return m.(map[protowire.Number]protoField)
	}
	var m map[protowire.Number]protoField
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("protobuf")
		if tag == "" {
			continue
		}
		parts := strings.Split(tag, ",")
		if len(parts) < 2 {
			continue
		}
		num, err := strconv.Atoi(parts[1])
		if err != nil {
			continue
		}
		if m == nil {
			m = map[protowire.Number]protoField{}
		}
		m[protowire.Number(num)] = protoField{name: f.Name, typ: f.Type}
	}
	protoFieldCache.Store(t, m)
	return m
}

// messageType is the struct type a length-delimited field holds, nil for strings and bytes.
func messageType(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer || (t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8) {
		t = t.Elem()
	}
	if t.Kind() == reflect.Struct {
		return t
	}
	return nil
}
