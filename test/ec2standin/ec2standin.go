// Package ec2standin is a STAND-IN for Amazon EC2, for tests only: no EC2 runs on the
// test machines, so this small HTTP server on 127.0.0.1 answers the two EC2 API calls
// vcsnap makes for cross-region EBS snapshot copies, CopySnapshot and DescribeSnapshots,
// in EC2's query protocol (form-encoded requests, XML responses), so that the real
// aws-sdk-go-v2 EC2 client can be driven against it. It models what vcsnap relies on:
// a copy starts "pending" and, after a number of DescribeSnapshots calls chosen per
// source snapshot, becomes "completed" or "error"; tags given at CopySnapshot are kept
// and tag filters work. It does not model EC2's authentication, quotas or real timing.
package ec2standin

import (
	"encoding/xml"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Plan says how the copy of one source snapshot behaves.
type Plan struct {
	// PendingPolls is how many DescribeSnapshots answers show the copy pending.
	PendingPolls int
	// FailWith, when set, ends the copy in state "error" with this message.
	FailWith string
	// Stuck keeps the copy pending forever.
	Stuck bool
	// InvisiblePolls is how many DescribeSnapshots calls by id answer NotFound for the
	// new copy first (EC2's API is eventually consistent).
	InvisiblePolls int
}

// Snapshot is a snapshot the stand-in knows.
type Snapshot struct {
	ID, State, StateMessage string
	SourceRegion, SourceID  string
	Region                  string // the region the CopySnapshot request was signed for
	Description, KMSKeyID   string
	Encrypted               bool
	Tags                    map[string]string
	polls, invisible        int
	plan                    Plan
}

// Server is the stand-in.
type Server struct {
	URL string

	mu       sync.Mutex
	plans    map[string]Plan
	snaps    []*Snapshot
	calls    []string
	srv      *http.Server
	authSeen []string
}

// Start serves on a free port on 127.0.0.1 until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{URL: "http://" + ln.Addr().String(), plans: map[string]Plan{}}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

// SetPlan sets how copies of the source snapshot id behave (default: completed after
// one pending answer).
func (s *Server) SetPlan(sourceID string, p Plan) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.plans[sourceID] = p
}

// Copies returns the snapshots created by CopySnapshot, in order.
func (s *Server) Copies() []Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Snapshot, len(s.snaps))
	for i, sn := range s.snaps {
		out[i] = *sn
	}
	return out
}

// Calls returns the actions called, in order.
func (s *Server) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

// Authorization returns the Authorization headers received (to prove no secret is in them).
func (s *Server) Authorization() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.authSeen...)
}

var scopeRE = regexp.MustCompile(`Credential=[^/]+/\d+/([^/]+)/ec2/aws4_request`)

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeError(w, "InvalidParameterValue", err.Error())
		return
	}
	auth := r.Header.Get("Authorization")
	m := scopeRE.FindStringSubmatch(auth)
	if m == nil {
		writeError(w, "AuthFailure", "request is not signed with SigV4 for ec2")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authSeen = append(s.authSeen, auth)
	action := r.PostForm.Get("Action")
	s.calls = append(s.calls, action)
	switch action {
	case "CopySnapshot":
		s.copySnapshot(w, r.PostForm, m[1])
	case "DescribeSnapshots":
		s.describeSnapshots(w, r.PostForm)
	default:
		writeError(w, "InvalidAction", "the stand-in implements CopySnapshot and DescribeSnapshots only, not "+action)
	}
}

func (s *Server) copySnapshot(w http.ResponseWriter, f url.Values, region string) {
	src := f.Get("SourceSnapshotId")
	if src == "" || f.Get("SourceRegion") == "" {
		writeError(w, "MissingParameter", "SourceSnapshotId and SourceRegion are required")
		return
	}
	sn := &Snapshot{ID: fmt.Sprintf("snap-0c0ffee%09d", len(s.snaps)+1), State: "pending", SourceRegion: f.Get("SourceRegion"),
		SourceID: src, Region: region, Description: f.Get("Description"), KMSKeyID: f.Get("KmsKeyId"),
		Encrypted: f.Get("Encrypted") == "true", Tags: map[string]string{}, plan: Plan{PendingPolls: 1}}
	if p, ok := s.plans[src]; ok {
		sn.plan = p
	}
	for i := 1; ; i++ {
		k := fmt.Sprintf("TagSpecification.1.Tag.%d.", i)
		if !f.Has(k + "Key") {
			break
		}
		sn.Tags[f.Get(k+"Key")] = f.Get(k + "Value")
	}
	if len(sn.Tags) > 0 && f.Get("TagSpecification.1.ResourceType") != "snapshot" {
		writeError(w, "InvalidParameterValue", "tag specifications must name resource type snapshot")
		return
	}
	s.snaps = append(s.snaps, sn)
	writeXML(w, struct {
		XMLName    xml.Name `xml:"CopySnapshotResponse"`
		RequestID  string   `xml:"requestId"`
		SnapshotID string   `xml:"snapshotId"`
	}{RequestID: "req-copy", SnapshotID: sn.ID})
}

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xmlSnapshot struct {
	SnapshotID  string   `xml:"snapshotId"`
	Status      string   `xml:"status"`
	StatusMsg   string   `xml:"statusMessage,omitempty"`
	Progress    string   `xml:"progress"`
	Description string   `xml:"description"`
	Encrypted   bool     `xml:"encrypted"`
	KMSKeyID    string   `xml:"kmsKeyId,omitempty"`
	OwnerID     string   `xml:"ownerId"`
	StartTime   string   `xml:"startTime"`
	Tags        []xmlTag `xml:"tagSet>item"`
}

func (s *Server) describeSnapshots(w http.ResponseWriter, f url.Values) {
	var ids []string
	for i := 1; f.Has(fmt.Sprintf("SnapshotId.%d", i)); i++ {
		ids = append(ids, f.Get(fmt.Sprintf("SnapshotId.%d", i)))
	}
	filters := map[string][]string{}
	for i := 1; f.Has(fmt.Sprintf("Filter.%d.Name", i)); i++ {
		name := f.Get(fmt.Sprintf("Filter.%d.Name", i))
		for j := 1; f.Has(fmt.Sprintf("Filter.%d.Value.%d", i, j)); j++ {
			filters[name] = append(filters[name], f.Get(fmt.Sprintf("Filter.%d.Value.%d", i, j)))
		}
	}
	var out []*Snapshot
	for _, id := range ids {
		sn := s.find(id)
		if sn != nil && sn.invisible < sn.plan.InvisiblePolls {
			sn.invisible++
			sn = nil
		}
		if sn == nil {
			writeError(w, "InvalidSnapshot.NotFound", fmt.Sprintf("The snapshot '%s' does not exist.", id))
			return
		}
		out = append(out, sn)
	}
	if len(ids) == 0 {
		for _, sn := range s.snaps {
			if matches(sn, filters) {
				out = append(out, sn)
			}
		}
	}
	resp := struct {
		XMLName   xml.Name      `xml:"DescribeSnapshotsResponse"`
		RequestID string        `xml:"requestId"`
		Snaps     []xmlSnapshot `xml:"snapshotSet>item"`
	}{RequestID: "req-describe"}
	for _, sn := range out {
		s.advance(sn)
		x := xmlSnapshot{SnapshotID: sn.ID, Status: sn.State, StatusMsg: sn.StateMessage, Progress: progress(sn),
			Description: sn.Description, Encrypted: sn.Encrypted, KMSKeyID: sn.KMSKeyID, OwnerID: "111122223333",
			StartTime: "2026-11-21T10:00:00.000Z"}
		keys := make([]string, 0, len(sn.Tags))
		for k := range sn.Tags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			x.Tags = append(x.Tags, xmlTag{Key: k, Value: sn.Tags[k]})
		}
		resp.Snaps = append(resp.Snaps, x)
	}
	writeXML(w, resp)
}

// advance moves a pending copy one poll on.
func (s *Server) advance(sn *Snapshot) {
	if sn.State != "pending" || sn.plan.Stuck {
		return
	}
	if sn.polls < sn.plan.PendingPolls {
		sn.polls++
		return
	}
	if sn.plan.FailWith != "" {
		sn.State, sn.StateMessage = "error", sn.plan.FailWith
		return
	}
	sn.State = "completed"
}

func progress(sn *Snapshot) string {
	switch {
	case sn.State == "completed":
		return "100%"
	case sn.plan.PendingPolls == 0:
		return "0%"
	}
	return strconv.Itoa(min(99, 100*sn.polls/(sn.plan.PendingPolls+1))) + "%"
}

func (s *Server) find(id string) *Snapshot {
	for _, sn := range s.snaps {
		if sn.ID == id {
			return sn
		}
	}
	return nil
}

func matches(sn *Snapshot, filters map[string][]string) bool {
	for name, values := range filters {
		var have string
		switch {
		case strings.HasPrefix(name, "tag:"):
			v, ok := sn.Tags[strings.TrimPrefix(name, "tag:")]
			if !ok {
				return false
			}
			have = v
		case name == "status":
			have = sn.State
		default:
			return false // a filter the stand-in does not know matches nothing
		}
		found := false
		for _, v := range values {
			found = found || v == have
		}
		if !found {
			return false
		}
	}
	return true
}

func writeXML(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	b, _ := xml.Marshal(v)
	w.Write([]byte(xml.Header))
	w.Write(b)
}

func writeError(w http.ResponseWriter, code, msg string) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>req-err</RequestID></Response>`,
		code, xmlEscape(msg))
}

func xmlEscape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
