package translate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrSpec marks a translation that cannot work as asked (a missing source, a bad range).
var ErrSpec = errors.New("invalid translation")

// Spec is a translation as a user states it: a namespace and a name as FROM=TO, or TO
// alone with FROM read from the bundle's manifest, the target's service range, and
// whether the target is another host.
type Spec struct {
	Namespace   string `json:"namespace,omitempty"`
	Name        string `json:"name,omitempty"`
	ServiceCIDR string `json:"serviceCIDR,omitempty"`
	NewHost     bool   `json:"newHost,omitempty"`
}

// Empty reports whether the spec asks for no translation.
func (s Spec) Empty() bool {
	return s.Namespace == "" && s.Name == "" && s.ServiceCIDR == "" && !s.NewHost
}

// Rules returns the rules the spec asks for, nil for none. source is called only when a
// FROM is left out: it returns the host namespace and name the bundle records.
func (s Spec) Rules(ctx context.Context, source func(context.Context) (namespace, name string, err error)) (*Rules, error) {
	if s.Empty() {
		return nil, nil
	}
	fromNS, toNS := splitFromTo(s.Namespace)
	fromName, toName := splitFromTo(s.Name)
	if s.Namespace != "" || s.Name != "" {
		// Host names derive from both the name and the host namespace: a FROM left out
		// comes from the bundle, and a TO left out keeps the FROM.
		if fromNS == "" || fromName == "" {
			ns, name, err := source(ctx)
			if err != nil {
				return nil, fmt.Errorf("read the bundle's manifest for the virtual cluster's namespace and name (or give them as FROM=TO): %w", err)
			}
			fromNS, fromName = cmp.Or(fromNS, ns), cmp.Or(fromName, name)
		}
		if fromNS == "" || fromName == "" {
			return nil, fmt.Errorf("%w: the bundle does not record the virtual cluster's host namespace and name: give both as FROM=TO", ErrSpec)
		}
		toNS, toName = cmp.Or(toNS, fromNS), cmp.Or(toName, fromName)
	}
	r := ForNewHost(fromNS, fromName, toNS, toName, s.ServiceCIDR)
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSpec, err)
	}
	return r, nil
}

// splitFromTo parses FROM=TO; a bare TO leaves FROM empty.
func splitFromTo(s string) (from, to string) {
	if f, t, ok := strings.Cut(s, "="); ok {
		return f, t
	}
	return "", s
}
