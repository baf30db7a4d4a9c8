package translate

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// validRange is how the apiserver names its service range when it refuses a ClusterIP.
var validRange = regexp.MustCompile(`range of valid IPs is ([0-9a-fA-F.:/]+)`)

// DetectServiceCIDR finds a cluster's service range(s), comma-separated. It reads the
// default ServiceCIDR object where the API serves it; otherwise it asks the apiserver to
// create (dry run: nothing is created) a Service in namespace with an address outside
// any usual range, per IP family, and reads the range from the refusal, as vcluster does.
func DetectServiceCIDR(ctx context.Context, cs kubernetes.Interface, namespace string) (string, error) {
	if sc, err := cs.NetworkingV1().ServiceCIDRs().Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil && len(sc.Spec.CIDRs) > 0 {
		return strings.Join(sc.Spec.CIDRs, ","), nil
	}
	if sc, err := cs.NetworkingV1beta1().ServiceCIDRs().Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil && len(sc.Spec.CIDRs) > 0 {
		return strings.Join(sc.Spec.CIDRs, ","), nil
	}
	var cidrs []string
	var errs []error
	for _, probe := range []string{"4.4.4.4", "2001:db8::4"} {
		cidr, err := probeServiceCIDR(ctx, cs, namespace, probe)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cidrs = append(cidrs, cidr)
	}
	if len(cidrs) == 0 {
		return "", fmt.Errorf("detect the service CIDR of the cluster (give it with --target-service-cidr instead): %w", errors.Join(errs...))
	}
	return strings.Join(cidrs, ","), nil
}

func probeServiceCIDR(ctx context.Context, cs kubernetes.Interface, namespace, ip string) (string, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "vcsnap-cidr-probe-"},
		Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{{Name: "probe", Port: 80}}},
	}
	_, err := cs.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil {
		return "", fmt.Errorf("the probe address %s was accepted: the range cannot be read from a refusal", ip)
	}
	if m := validRange.FindStringSubmatch(err.Error()); m != nil {
		return m[1], nil
	}
	if apierrors.IsForbidden(err) {
		return "", fmt.Errorf("probe with a dry-run Service in %s: %w", namespace, err)
	}
	return "", fmt.Errorf("probe %s: %w", ip, err)
}
