package storage

import "testing"

// Part sizes grow with the stream so 10,000 parts reach terabytes (vcluster's fixed 5 MiB
// parts stop near 48.8 GiB), while small bundles keep small buffers.
func TestPartSizeGrows(t *testing.T) {
	s := &S3Store{opts: S3Options{PartSize: DefaultPartSize}}
	if s.partSize(1) != 5<<20 || s.partSize(1000) != 5<<20 || s.partSize(1001) != 10<<20 {
		t.Fatalf("sizes %d %d %d", s.partSize(1), s.partSize(1000), s.partSize(1001))
	}
	var total int64
	for n := 1; n <= maxParts; n++ {
		if p := s.partSize(n); p < minPartSize || p > maxPartSize {
			t.Fatalf("part %d size %d out of S3 limits", n, p)
		}
		total += s.partSize(n)
	}
	if total < 4<<40 {
		t.Fatalf("10,000 parts hold only %d bytes", total)
	}
}
