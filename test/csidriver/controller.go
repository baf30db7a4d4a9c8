package main

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type controller struct {
	csi.UnimplementedControllerServer
	d *driver
}

func (c *controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}},
		})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func validateCaps(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities missing")
	}
	for _, c := range caps {
		if c.GetBlock() != nil {
			return status.Error(codes.InvalidArgument, "block volumes are not supported")
		}
		if c.GetMount() == nil {
			return status.Error(codes.InvalidArgument, "access type mount required")
		}
	}
	return nil
}

func (c *controller) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name missing")
	}
	if err := validateCaps(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	required := req.GetCapacityRange().GetRequiredBytes()
	limit := req.GetCapacityRange().GetLimitBytes()
	if limit > 0 && required > limit {
		return nil, status.Errorf(codes.OutOfRange, "required %d > limit %d", required, limit)
	}
	capacity := required
	if capacity == 0 {
		capacity = defaultCapacity
		if limit > 0 && limit < capacity {
			capacity = limit
		}
	}
	src := req.GetVolumeContentSource()
	snapID := ""
	if src != nil {
		if src.GetVolume() != nil {
			return nil, status.Error(codes.InvalidArgument, "volume cloning is not supported")
		}
		snapID = src.GetSnapshot().GetSnapshotId()
		if snapID == "" {
			return nil, status.Error(codes.InvalidArgument, "content source without snapshot id")
		}
	}

	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	id := idFor(req.GetName())
	if m, err := d.getVolume(id); err == nil {
		if m.Name != req.GetName() || m.CapacityBytes < required || (limit > 0 && m.CapacityBytes > limit) || m.SourceSnapshot != snapID {
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with different parameters", req.GetName())
		}
		return &csi.CreateVolumeResponse{Volume: volumeOf(m, src)}, nil
	} else if status.Code(err) != codes.NotFound {
		return nil, errStatus(err)
	}

	var snap *snapshotMeta
	if snapID != "" {
		if err := validID(snapID); err != nil {
			return nil, err
		}
		s, err := d.getSnapshot(snapID)
		if err != nil {
			return nil, errStatus(err)
		}
		if s.SizeBytes > capacity {
			if limit > 0 && s.SizeBytes > limit {
				return nil, status.Errorf(codes.OutOfRange, "snapshot size %d exceeds limit %d", s.SizeBytes, limit)
			}
			capacity = s.SizeBytes
		}
		snap = s
	}
	dir := d.volDir(id)
	// A directory without metadata is a leftover of an interrupted create.
	if err := os.RemoveAll(dir); err != nil {
		return nil, errStatus(err)
	}
	if err := ensureDir(dir); err != nil {
		return nil, errStatus(err)
	}
	if snap != nil {
		if err := untar(d.snapTar(snap.ID), dir); err != nil {
			_ = os.RemoveAll(dir)
			return nil, status.Errorf(codes.Internal, "restore snapshot %s: %v", snap.ID, err)
		}
	}
	m := &volumeMeta{Name: req.GetName(), ID: id, CapacityBytes: capacity, SourceSnapshot: snapID, Created: nowUTC()}
	if err := writeJSON(d.volMeta(id), m); err != nil {
		_ = os.RemoveAll(dir)
		return nil, errStatus(err)
	}
	return &csi.CreateVolumeResponse{Volume: volumeOf(m, src)}, nil
}

func volumeOf(m *volumeMeta, src *csi.VolumeContentSource) *csi.Volume {
	v := &csi.Volume{VolumeId: m.ID, CapacityBytes: m.CapacityBytes}
	if src != nil {
		v.ContentSource = proto.Clone(src).(*csi.VolumeContentSource)
	}
	return v
}

func (c *controller) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id missing")
	}
	if validID(id) != nil {
		return &csi.DeleteVolumeResponse{}, nil // cannot exist: already deleted
	}
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.Remove(d.volMeta(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, errStatus(err)
	}
	if err := os.RemoveAll(d.volDir(id)); err != nil {
		return nil, errStatus(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (c *controller) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if err := validID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	if _, err := c.d.getVolume(req.GetVolumeId()); err != nil {
		return nil, errStatus(err)
	}
	if err := validateCaps(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func (c *controller) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name missing")
	}
	srcID := req.GetSourceVolumeId()
	if srcID == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume id missing")
	}
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	id := idFor(req.GetName())
	if m, err := d.getSnapshot(id); err == nil {
		if m.Name != req.GetName() || m.SourceVolumeID != srcID {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists for volume %q", req.GetName(), m.SourceVolumeID)
		}
		return &csi.CreateSnapshotResponse{Snapshot: snapshotOf(m)}, nil
	} else if status.Code(err) != codes.NotFound {
		return nil, errStatus(err)
	}
	if err := validID(srcID); err != nil {
		return nil, err
	}
	vol, err := d.getVolume(srcID)
	if err != nil {
		return nil, errStatus(err)
	}
	n, err := tarDir(d.volDir(srcID), d.snapTar(id))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "tar volume %s: %v", srcID, err)
	}
	_, pendErr := os.Stat(filepath.Join(d.volDir(srcID), pendingMarker))
	m := &snapshotMeta{Name: req.GetName(), ID: id, SourceVolumeID: srcID, SizeBytes: vol.CapacityBytes, TarBytes: n, Created: nowUTC(), Pending: pendErr == nil}
	if err := writeJSON(d.snapMeta(id), m); err != nil {
		_ = os.Remove(d.snapTar(id))
		return nil, errStatus(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: snapshotOf(m)}, nil
}

func snapshotOf(m *snapshotMeta) *csi.Snapshot {
	return &csi.Snapshot{
		SizeBytes:      m.SizeBytes,
		SnapshotId:     m.ID,
		SourceVolumeId: m.SourceVolumeID,
		CreationTime:   timestamppb.New(m.Created),
		ReadyToUse:     !m.Pending,
	}
}

func (c *controller) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id missing")
	}
	if validID(id) != nil {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	d := c.d
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range []string{d.snapMeta(id), d.snapTar(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, errStatus(err)
		}
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (c *controller) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	d := c.d
	d.mu.Lock()
	all, err := d.listSnapshots()
	d.mu.Unlock()
	if err != nil {
		return nil, errStatus(err)
	}
	var sel []*snapshotMeta
	for _, m := range all {
		if req.GetSnapshotId() != "" && m.ID != req.GetSnapshotId() {
			continue
		}
		if req.GetSourceVolumeId() != "" && m.SourceVolumeID != req.GetSourceVolumeId() {
			continue
		}
		sel = append(sel, m)
	}
	start := 0
	if tok := req.GetStartingToken(); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 || n > len(sel) {
			return nil, status.Errorf(codes.Aborted, "invalid starting token %q", tok)
		}
		start = n
	}
	end := len(sel)
	if max := int(req.GetMaxEntries()); max > 0 && start+max < end {
		end = start + max
	}
	resp := &csi.ListSnapshotsResponse{}
	for _, m := range sel[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotOf(m)})
	}
	if end < len(sel) {
		resp.NextToken = strconv.Itoa(end)
	}
	return resp, nil
}
