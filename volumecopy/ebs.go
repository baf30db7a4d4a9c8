package volumecopy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/vcsnap/vcsnap/snapshot/bundle"
)

// EBSDriver is the AWS EBS CSI driver, whose snapshots vcsnap copies between regions.
const EBSDriver = "ebs.csi.aws.com"

// Tags vcsnap puts on every snapshot copy. A copy is found again by its source
// snapshot and region, so a copy run again after a timeout or interruption waits for
// the copies already started instead of starting more.
const (
	TagSourceSnapshot = "vcsnap.io/source-snapshot"
	TagSourceRegion   = "vcsnap.io/source-region"
	TagPVC            = "vcsnap.io/pvc"
	TagBundle         = "vcsnap.io/bundle"
)

// notFoundGrace is how long a copy just started may be unknown to DescribeSnapshots.
const notFoundGrace = 2 * time.Minute

// EBSOptions configure EBS snapshot copies.
type EBSOptions struct {
	// TargetRegion is where the copies are made (required).
	TargetRegion string
	// SourceRegion is the region of snapshots whose record carries none.
	SourceRegion string
	// KMSKeyID encrypts the copies with this KMS key of the target region.
	KMSKeyID string
	// Timeout bounds the wait for all copies to complete; zero means 6 hours.
	Timeout time.Duration
	// PollInterval is the time between DescribeSnapshots calls; zero means 15 s.
	PollInterval time.Duration
	// Bundle names the bundle being copied, for the copies' tags and description.
	Bundle string
	// Endpoint overrides the EC2 endpoint (tests; AWS_ENDPOINT_URL_EC2 works too).
	Endpoint   string
	HTTPClient *http.Client
}

// EBSCopier copies EBS snapshots into one target region.
type EBSCopier struct {
	client *ec2.Client
	o      EBSOptions
}

// NewEBSCopier builds an EC2 client for the target region from the AWS default
// configuration (environment, shared profile, web identity, instance role).
func NewEBSCopier(ctx context.Context, o EBSOptions) (*EBSCopier, error) {
	if o.TargetRegion == "" {
		return nil, errors.New("copying EBS snapshots needs the target region: pass --volume-region-to REGION")
	}
	if o.Timeout == 0 {
		o.Timeout = 6 * time.Hour
	}
	if o.PollInterval == 0 {
		o.PollInterval = 15 * time.Second
	}
	loaders := []func(*config.LoadOptions) error{config.WithRegion(o.TargetRegion)}
	if o.HTTPClient != nil {
		loaders = append(loaders, config.WithHTTPClient(o.HTTPClient))
	}
	cfg, err := config.LoadDefaultConfig(ctx, loaders...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration for EC2: %w", err)
	}
	client := ec2.NewFromConfig(cfg, func(eo *ec2.Options) {
		if o.Endpoint != "" {
			eo.BaseEndpoint = aws.String(o.Endpoint)
		}
	})
	return &EBSCopier{client: client, o: o}, nil
}

// Copy copies the snapshots of vols (all EBS, with handles) into the target region,
// waits until every copy has completed, and returns the records with the new handles
// and the target region. Snapshots already in the target region are kept as they are.
func (c *EBSCopier) Copy(ctx context.Context, vols []bundle.Volume) ([]bundle.Volume, error) {
	out := make([]bundle.Volume, len(vols))
	copy(out, vols)
	pending := map[string]string{} // copy's snapshot id -> what it copies, for messages
	for i, v := range out {
		if v.Driver != EBSDriver || v.SnapshotHandle == "" {
			return nil, fmt.Errorf("%s is not an EBS snapshot: only %s snapshots are copied with EC2", describe(v), EBSDriver)
		}
		region := v.Region
		if region == "" {
			region = c.o.SourceRegion
		}
		if region == "" {
			return nil, fmt.Errorf("%s records no region: pass --volume-region-from REGION (the region the snapshot is in)", describe(v))
		}
		if region == c.o.TargetRegion {
			slog.Info("snapshot is already in the target region", "snapshot", v.SnapshotHandle, "region", region)
			out[i].Region = region
			continue
		}
		id, err := c.start(ctx, v, region)
		if err != nil {
			return nil, err
		}
		pending[id] = fmt.Sprintf("snapshot %s of PVC %s/%s", v.SnapshotHandle, v.Namespace, v.PVC)
		out[i].SnapshotHandle, out[i].Region = id, c.o.TargetRegion
	}
	if err := c.wait(ctx, pending); err != nil {
		return nil, err
	}
	return out, nil
}

// start returns the id of a copy of v's snapshot in the target region: one started
// earlier (found by its tags) unless it failed, or a new one.
func (c *EBSCopier) start(ctx context.Context, v bundle.Volume, region string) (string, error) {
	found, err := c.client.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{
		OwnerIds: []string{"self"},
		Filters: []types.Filter{
			{Name: aws.String("tag:" + TagSourceSnapshot), Values: []string{v.SnapshotHandle}},
			{Name: aws.String("tag:" + TagSourceRegion), Values: []string{region}},
		},
	})
	if err != nil {
		return "", fmt.Errorf("look for earlier copies of snapshot %s in %s: %w", v.SnapshotHandle, c.o.TargetRegion, ec2Hint(err))
	}
	for _, s := range found.Snapshots {
		if s.State != types.SnapshotStateError && s.SnapshotId != nil {
			slog.Info("reusing a copy started earlier", "snapshot", v.SnapshotHandle, "copy", *s.SnapshotId, "state", s.State)
			return *s.SnapshotId, nil
		}
	}
	tags := []types.Tag{
		{Key: aws.String("Name"), Value: aws.String("vcsnap copy of " + v.SnapshotHandle)},
		{Key: aws.String(TagSourceSnapshot), Value: aws.String(v.SnapshotHandle)},
		{Key: aws.String(TagSourceRegion), Value: aws.String(region)},
		{Key: aws.String(TagPVC), Value: aws.String(v.Namespace + "/" + v.PVC)},
	}
	if c.o.Bundle != "" {
		tags = append(tags, types.Tag{Key: aws.String(TagBundle), Value: aws.String(truncate(c.o.Bundle, 256))})
	}
	in := &ec2.CopySnapshotInput{
		SourceRegion:      aws.String(region),
		SourceSnapshotId:  aws.String(v.SnapshotHandle),
		Description:       aws.String(truncate(fmt.Sprintf("vcsnap copy of %s from %s (PVC %s/%s)", v.SnapshotHandle, region, v.Namespace, v.PVC), 255)),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeSnapshot, Tags: tags}},
	}
	if c.o.KMSKeyID != "" {
		in.Encrypted, in.KmsKeyId = aws.Bool(true), aws.String(c.o.KMSKeyID)
	}
	res, err := c.client.CopySnapshot(ctx, in)
	if err != nil {
		return "", fmt.Errorf("copy snapshot %s from %s to %s: %w", v.SnapshotHandle, region, c.o.TargetRegion, ec2Hint(err))
	}
	id := aws.ToString(res.SnapshotId)
	slog.Info("snapshot copy started", "snapshot", v.SnapshotHandle, "from", region, "to", c.o.TargetRegion, "copy", id)
	return id, nil
}

// wait polls DescribeSnapshots until every copy has completed, one has failed, or the
// timeout passes.
func (c *EBSCopier) wait(ctx context.Context, pending map[string]string) error {
	if len(pending) == 0 {
		return nil
	}
	deadline := time.Now().Add(c.o.Timeout)
	ids := make([]string, 0, len(pending))
	for id := range pending {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	progress := map[string]string{}
	// EC2's API is eventually consistent: a copy just started may be unknown for a while.
	unknownUntil := time.Now().Add(min(notFoundGrace, c.o.Timeout))
	for {
		res, err := c.client.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: ids})
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode() == "InvalidSnapshot.NotFound" && time.Now().Before(unknownUntil) {
			slog.Debug("snapshot copies not visible yet", "copies", strings.Join(ids, ","), "error", err)
			res, err = &ec2.DescribeSnapshotsOutput{}, nil
			for _, id := range ids {
				res.Snapshots = append(res.Snapshots, types.Snapshot{SnapshotId: aws.String(id), State: types.SnapshotStatePending, Progress: aws.String("not visible yet")})
			}
		}
		if err != nil {
			return fmt.Errorf("check the snapshot copies %s in %s: %w", strings.Join(ids, ", "), c.o.TargetRegion, ec2Hint(err))
		}
		var left []string
		for _, s := range res.Snapshots {
			id := aws.ToString(s.SnapshotId)
			switch s.State {
			case types.SnapshotStateCompleted:
				continue
			case types.SnapshotStateError:
				return fmt.Errorf("the copy %s in %s of %s failed (state error: %q): fix the cause (often the KMS key's permissions in the target region) and run the copy again; failed copies are not reused",
					id, c.o.TargetRegion, pending[id], aws.ToString(s.StateMessage))
			}
			left = append(left, id)
			progress[id] = aws.ToString(s.Progress)
		}
		if len(res.Snapshots) < len(ids) {
			return fmt.Errorf("EC2 in %s returned %d of the %d snapshot copies %s", c.o.TargetRegion, len(res.Snapshots), len(ids), strings.Join(ids, ", "))
		}
		if len(left) == 0 {
			slog.Info("snapshot copies completed", "copies", strings.Join(ids, ","), "region", c.o.TargetRegion)
			return nil
		}
		if !time.Now().Before(deadline) {
			var st []string
			for _, id := range left {
				st = append(st, fmt.Sprintf("%s (%s)", id, progress[id]))
			}
			return fmt.Errorf("snapshot copies still pending in %s after %v: %s; they continue in AWS: run the same copy again (with a longer --volume-timeout) and it waits for these copies instead of starting new ones",
				c.o.TargetRegion, c.o.Timeout, strings.Join(st, ", "))
		}
		slog.Info("waiting for snapshot copies", "pending", len(left), "of", len(ids), "region", c.o.TargetRegion)
		t := time.NewTimer(min(c.o.PollInterval, time.Until(deadline)+time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("stopped waiting for snapshot copies %s (they continue in AWS; running the copy again reuses them): %w", strings.Join(left, ", "), ctx.Err())
		case <-t.C:
		}
	}
}

// ec2Hint adds what to check to an EC2 API error.
func ec2Hint(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "UnauthorizedOperation"), strings.Contains(msg, "AuthFailure"):
		return fmt.Errorf("%w (the credentials need ec2:CopySnapshot, ec2:DescribeSnapshots and ec2:CreateTags in the target region, and kms:* grants for encrypted snapshots)", err)
	case strings.Contains(msg, "InvalidSnapshot.NotFound"):
		return fmt.Errorf("%w (check the snapshot's source region: --volume-region-from, or the region recorded in the bundle)", err)
	}
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
