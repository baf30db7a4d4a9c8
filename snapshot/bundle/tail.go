package bundle

import (
	"fmt"
	"hash/crc32"
)

// TailSize is how many bytes from the end of a bundle ReadTail usually needs: the trailer
// plus a manifest of ordinary size. describe and list fetch only this much.
const TailSize = 64 << 10

// ParseTail reads the manifest from the last bytes of a bundle of the given total size.
// When the manifest is longer than tail, it returns need > 0: fetch that many bytes from
// the end and call again. The manifest is checked against its CRC but, unlike a full
// read, not against the bundle's sha256: describe reports it, verify proves it.
func ParseTail(tail []byte, size int64) (m *Manifest, need int, err error) {
	if size < TrailerSize || len(tail) < TrailerSize {
		return nil, 0, fmt.Errorf("%w: %d bytes is too short", ErrIncomplete, size)
	}
	t, err := parseTrailer(tail[len(tail)-TrailerSize:])
	if err != nil {
		return nil, 0, err
	}
	if t.manifestLen > maxManifestSize || int64(t.manifestLen)+TrailerSize+4 > size {
		return nil, 0, corruptf("trailer claims a %d-byte manifest", t.manifestLen)
	}
	total := int(t.manifestLen) + TrailerSize
	if len(tail) < total {
		return nil, total, nil
	}
	mjs := tail[len(tail)-total : len(tail)-TrailerSize]
	if crc32.Checksum(mjs, castagnoli) != t.manifestCRC {
		return nil, 0, corruptf("manifest checksum mismatch")
	}
	m, err = parseManifest(mjs)
	return m, 0, err
}
