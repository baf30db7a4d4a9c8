package translate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// How the kube-apiserver stores objects: built-in types as protobuf behind a 4-byte
// magic, custom resources as JSON, and values encrypted at rest behind their own prefix.
var (
	protobufMagic  = []byte("k8s\x00")
	encryptedMagic = []byte("k8s:enc:")
)

var protoSerializer = protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)

// object is one decoded datastore value.
type object struct {
	obj   runtime.Object // a typed object (protobuf) or *unstructured.Unstructured (JSON)
	gvk   schema.GroupVersionKind
	proto bool
}

// errUndecodable marks values the rules cannot read: encrypted at rest, or of a kind
// this build's scheme does not know. They are restored as they are.
type errUndecodable struct{ why string }

func (e errUndecodable) Error() string { return e.why }

// decode reads a stored value. It refuses (errUndecodable) values it cannot read and
// values it could not write back byte for byte: re-encoding such a value would lose
// what this build does not know (fields added by a newer Kubernetes).
func decode(value []byte) (*object, error) {
	var o *object
	switch {
	case bytes.HasPrefix(value, encryptedMagic):
		return nil, errUndecodable{"encrypted at rest"}
	case bytes.HasPrefix(value, protobufMagic):
		obj, gvk, err := protoSerializer.Decode(value, nil, nil)
		if err != nil {
			if runtime.IsNotRegisteredError(err) {
				return nil, errUndecodable{err.Error()}
			}
			return nil, err
		}
		o = &object{obj: obj, gvk: *gvk, proto: true}
	case len(value) > 0 && value[0] == '{':
		obj, gvk, err := unstructured.UnstructuredJSONScheme.Decode(value, nil, nil)
		if err != nil {
			return nil, err
		}
		o = &object{obj: obj, gvk: *gvk}
	default:
		return nil, errUndecodable{"neither protobuf nor JSON"}
	}
	if err := o.lossless(value); err != nil {
		return nil, err
	}
	return o, nil
}

// lossless checks that encoding the decoded object keeps everything the stored value
// holds: every protobuf field is one this build knows (see unknownField); JSON encodes
// back to the same document (key order aside).
func (o *object) lossless(value []byte) error {
	if o.proto {
		var unk runtime.Unknown
		if err := unk.Unmarshal(value[len(protobufMagic):]); err != nil {
			return err
		}
		path, err := unknownField(unk.Raw, reflect.TypeOf(o.obj), o.gvk.Kind)
		if err != nil {
			return err
		}
		if path != "" {
			return fmt.Errorf("this %s holds field %s, which this vcsnap build does not know (written by a newer Kubernetes?); rewriting it would lose the field: use a vcsnap built for this Kubernetes version", o.gvk.Kind, path)
		}
		return nil
	}
	again, err := o.encode()
	if err != nil {
		return err
	}
	var a, b any
	if err := jsonNumbers(value, &a); err != nil {
		return err
	}
	if err := jsonNumbers(again, &b); err != nil {
		return err
	}
	if !reflect.DeepEqual(a, b) {
		return fmt.Errorf("this %s does not survive decoding and encoding as JSON unchanged (numbers beyond 64 bits?); rewriting it would alter it", o.gvk.Kind)
	}
	return nil
}

func jsonNumbers(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}

// encode writes the object as the apiserver stores it.
func (o *object) encode() ([]byte, error) {
	var b bytes.Buffer
	o.obj.GetObjectKind().SetGroupVersionKind(o.gvk)
	var err error
	if o.proto {
		err = protoSerializer.Encode(o.obj, &b)
	} else {
		err = unstructured.UnstructuredJSONScheme.Encode(o.obj, &b)
	}
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", o.gvk.Kind, err)
	}
	return b.Bytes(), nil
}
