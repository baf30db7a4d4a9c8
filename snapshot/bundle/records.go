package bundle

import (
	"encoding/binary"
	"encoding/json"
)

// RecordType identifies one record of the body stream. Each record is framed as
// type (1 byte) | uvarint payload length | payload.
type RecordType uint8

const (
	RecordMeta   RecordType = 1    // payload: Meta as JSON; always the first record
	RecordLease  RecordType = 2    // payload: varint id | varint ttl | varint granted ttl
	RecordPut    RecordType = 3    // payload: uvarint klen | key | uvarint vlen | value | varint create | mod | version | lease
	RecordDelete RecordType = 4    // payload: uvarint klen | key | varint mod revision
	RecordEnd    RecordType = 0x7f // payload: varint keys | leases | deletes | key bytes | value bytes | revision
)

// Record is one decoded body record. KV.Key, KV.Value and Delete.Key alias the reader's
// buffer and are valid only until the next call to Next.
type Record struct {
	Type   RecordType
	Meta   *Meta
	Lease  Lease
	KV     KeyValue
	Delete Delete
}

func appendMeta(b []byte, m *Meta) ([]byte, error) {
	js, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return append(b, js...), nil
}

func appendLease(b []byte, l Lease) []byte {
	b = binary.AppendVarint(b, l.ID)
	b = binary.AppendVarint(b, l.TTL)
	return binary.AppendVarint(b, l.GrantedTTL)
}

func appendPut(b []byte, kv *KeyValue) []byte {
	b = binary.AppendUvarint(b, uint64(len(kv.Key)))
	b = append(b, kv.Key...)
	b = binary.AppendUvarint(b, uint64(len(kv.Value)))
	b = append(b, kv.Value...)
	b = binary.AppendVarint(b, kv.CreateRevision)
	b = binary.AppendVarint(b, kv.ModRevision)
	b = binary.AppendVarint(b, kv.Version)
	return binary.AppendVarint(b, kv.Lease)
}

func appendDelete(b []byte, d *Delete) []byte {
	b = binary.AppendUvarint(b, uint64(len(d.Key)))
	b = append(b, d.Key...)
	return binary.AppendVarint(b, d.ModRevision)
}

func appendEnd(b []byte, t Totals) []byte {
	for _, v := range []int64{t.Keys, t.Leases, t.Deletes, t.KeyBytes, t.ValueBytes, t.Revision} {
		b = binary.AppendVarint(b, v)
	}
	return b
}

// payloadParser reads fields out of one record payload with bounds checks; the first
// failure sticks and is reported by err.
type payloadParser struct {
	b   []byte
	bad bool
}

func (p *payloadParser) varint() int64 {
	v, n := binary.Varint(p.b)
	if n <= 0 {
		p.bad = true
		return 0
	}
	p.b = p.b[n:]
	return v
}

func (p *payloadParser) bytes() []byte {
	l, n := binary.Uvarint(p.b)
	if n <= 0 || l > uint64(len(p.b)-n) {
		p.bad = true
		return nil
	}
	v := p.b[n : n+int(l)]
	p.b = p.b[n+int(l):]
	return v
}

// done reports whether every field parsed and nothing is left over.
func (p *payloadParser) done() bool { return !p.bad && len(p.b) == 0 }
