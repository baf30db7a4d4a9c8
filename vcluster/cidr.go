package vcluster

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// probeClusterIP lies outside every service range a cluster can have (TEST-NET-1).
const probeClusterIP = "192.0.2.1"

var validRangeRE = regexp.MustCompile(`valid IPs is ([0-9a-fA-F.:/]+(?:,\s*[0-9a-fA-F.:/]+)*)`)

// HostServiceCIDR detects the host cluster's service range: it asks the apiserver to
// create (dry run: nothing is stored) a Service with a ClusterIP outside any range; the
// refusal names the valid range ("The range of valid IPs is 10.96.0.0/12"). This is
// the range Services synced from a virtual cluster get their addresses from.
func HostServiceCIDR(ctx context.Context, cs kubernetes.Interface, namespace string) (string, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "vcsnap-cidr-probe-"},
		Spec: corev1.ServiceSpec{
			ClusterIP: probeClusterIP,
			Ports:     []corev1.ServicePort{{Port: 443, Protocol: corev1.ProtocolTCP}},
		},
	}
	_, err := cs.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil {
		return "", fmt.Errorf("the host accepted the probe ClusterIP %s, so its service range is unknown", probeClusterIP)
	}
	if !apierrors.IsInvalid(err) {
		return "", fmt.Errorf("detect the host's service CIDR: %w", err)
	}
	return parseValidRange(err.Error())
}

func parseValidRange(msg string) (string, error) {
	m := validRangeRE.FindStringSubmatch(msg)
	if m == nil {
		return "", fmt.Errorf("detect the host's service CIDR: the apiserver's answer names no range: %s", msg)
	}
	var out []string
	for _, c := range strings.Split(m[1], ",") {
		c = strings.TrimSpace(c)
		if _, _, err := net.ParseCIDR(c); err != nil {
			return "", fmt.Errorf("detect the host's service CIDR: %q in %q is not a CIDR", c, msg)
		}
		out = append(out, c)
	}
	return strings.Join(out, ","), nil
}
