package vcluster

import (
	"context"

	"k8s.io/client-go/kubernetes"

	"github.com/vcsnap/vcsnap/translate"
)

// HostServiceCIDR is the host cluster's service range: the range Services synced from a
// virtual cluster get their addresses from (recorded in a bundle so that a restore onto
// another host can re-address them). See translate.DetectServiceCIDR.
func HostServiceCIDR(ctx context.Context, cs kubernetes.Interface, namespace string) (string, error) {
	return translate.DetectServiceCIDR(ctx, cs, namespace)
}
