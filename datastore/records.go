package datastore

// KeyValue is one live key as stored in the datastore.
type KeyValue struct {
	Key            []byte
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	Version        int64
	Lease          int64 // the source's lease ID; 0 means none
}

// Lease is a lease as captured: its ID in the source and the TTL left at capture time.
type Lease struct {
	ID         int64
	TTL        int64 // seconds remaining when captured
	GrantedTTL int64 // seconds the lease was granted with
}
