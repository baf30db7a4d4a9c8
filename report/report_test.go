package report

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestSummaryEventConfigMapAndPush(t *testing.T) {
	ctx := context.Background()
	ok := &Summary{Time: time.Unix(1800000000, 0).UTC(), Operation: "snapshot", Outcome: "success", VirtualCluster: "vc1",
		Bundle: "s3://bkt/vc1/vc1-x", Keys: 42, Bytes: 1234, Revision: 99, DurationSeconds: 1.5}
	var line bytes.Buffer
	ok.WriteLine(&line)
	if strings.Count(line.String(), "\n") != 1 || !json.Valid(line.Bytes()) {
		t.Fatalf("summary is not one JSON line: %q", line.String())
	}

	// A fast check with client-go's fake clientset; the chart test runs it for real.
	cs := fake.NewSimpleClientset()
	tg := &Target{Client: cs, Namespace: "team-a", JobName: "vc1-123", JobUID: "uid-1"}
	if err := tg.Event(ctx, ok); err != nil {
		t.Fatal(err)
	}
	evs, _ := cs.CoreV1().Events("team-a").List(ctx, metav1.ListOptions{})
	if len(evs.Items) != 1 || evs.Items[0].InvolvedObject.Name != "vc1-123" || evs.Items[0].Reason != "SnapshotSucceeded" ||
		!strings.Contains(evs.Items[0].Message, "42 keys") {
		t.Fatalf("events %+v", evs.Items)
	}
	if err := tg.ConfigMap(ctx, "vcsnap-status-vc1", ok); err != nil {
		t.Fatal(err)
	}
	failed := *ok
	failed.Outcome, failed.Error, failed.Time = "failure", "datastore unavailable", ok.Time.Add(time.Hour)
	if err := tg.ConfigMap(ctx, "vcsnap-status-vc1", &failed); err != nil {
		t.Fatal(err)
	}
	cm, _ := cs.CoreV1().ConfigMaps("team-a").Get(ctx, "vcsnap-status-vc1", metav1.GetOptions{})
	if cm.Data["lastOutcome"] != "failure" || !strings.Contains(cm.Data["lastSuccess"], `"keys":42`) {
		t.Fatalf("status ConfigMap %v", cm.Data)
	}

	var got []string
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = append(got, r.Method+" "+r.URL.Path+"\n"+string(b))
		w.WriteHeader(http.StatusOK)
	}))
	defer gw.Close()
	if err := Push(ctx, gw.URL, ok); err != nil {
		t.Fatal(err)
	}
	if err := Push(ctx, gw.URL, &failed); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got[0], "POST /metrics/job/vcsnap/vcluster/vc1\n") || !strings.Contains(got[0], "vcsnap_last_success_keys 42") ||
		!strings.Contains(got[0], "vcsnap_last_run_failed 0") {
		t.Fatalf("success push: %s", got[0])
	}
	// A failure must not overwrite the last success time.
	if strings.Contains(got[1], "vcsnap_last_success") || !strings.Contains(got[1], "vcsnap_last_run_failed 1") {
		t.Fatalf("failure push: %s", got[1])
	}
}
