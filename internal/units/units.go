// Package units holds value types whose JSON form people and scripts read: a duration in
// seconds, as every vcsnap JSON document writes it ("durationSeconds": 1.25).
package units

import (
	"encoding/json"
	"time"
)

// Seconds is a time.Duration that is written to JSON as fractional seconds.
type Seconds time.Duration

// Since is the time elapsed since t.
func Since(t time.Time) Seconds { return Seconds(time.Since(t)) }

// D returns the time.Duration.
func (s Seconds) D() time.Duration { return time.Duration(s) }

// Round rounds the duration to a multiple of m, for printing.
func (s Seconds) Round(m time.Duration) time.Duration { return time.Duration(s).Round(m) }

func (s Seconds) String() string { return time.Duration(s).String() }

func (s Seconds) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(s).Seconds()) }

func (s *Seconds) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*s = Seconds(f * float64(time.Second))
	return nil
}
