package units

import (
	"encoding/json"
	"testing"
	"time"
)

func TestSecondsJSON(t *testing.T) {
	b, err := json.Marshal(struct {
		D Seconds `json:"durationSeconds"`
	}{Seconds(1250 * time.Millisecond)})
	if err != nil || string(b) != `{"durationSeconds":1.25}` {
		t.Fatalf("%s %v", b, err)
	}
	var back struct {
		D Seconds `json:"durationSeconds"`
	}
	if err := json.Unmarshal(b, &back); err != nil || back.D.D() != 1250*time.Millisecond {
		t.Fatalf("%v %v", back.D, err)
	}
}
