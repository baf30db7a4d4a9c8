package rig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// The node's network, all of it created and deleted by the harness:
//
//	root namespace                          node namespace (ip netns vcsnap-XXXXXX)
//	  vsrXXXXXX 10.250.N.1/30  <== veth ==>  vsnXXXXXX 10.250.N.2/30   kubelet, containerd
//	  route 10.251.N.0/24 via 10.250.N.2       cni0 10.251.N.1/24 (bridge plugin)
//	  (forwarders, MinIO: on 10.250.N.1)         pods 10.251.N.x, routes only to
//	                                             10.251.N.0/24, 10.250.N.0/30 and
//	                                             the host's service range, whose
//	                                             kubernetes Service IP:443 is
//	                                             DNATed to the API forwarder
//
// Neither namespace gets a default route from the harness, the node
// namespace has none at all, and the root namespace does not forward
// (ip_forward is left as it is, 0 on the test machines): pods reach only
// each other, the node and the root end of the veth, where the harness
// exposes the servers pods need (Node.Expose). The test process reaches pods
// directly through the route to the pod CIDR.

var (
	netMu sync.Mutex
	// netnsMounted records whether /run/netns was a mount point before this
	// process created its first namespace (ip netns add makes it one).
	netnsDirWasMount  *bool
	netnsDirWasAbsent bool
	netnsLive         int
)

// nodeNet is the network of one node.
type nodeNet struct {
	index    int
	NetNS    string // ip netns name
	NSPath   string // /run/netns/<name>
	RootLink string // veth end in the root namespace
	NodeLink string // veth end in the node namespace
	HostIP   string // 10.250.N.1
	NodeIP   string // 10.250.N.2
	LinkCIDR string // 10.250.N.0/30
	PodCIDR  string // 10.251.N.0/24
	PodGW    string // 10.251.N.1
}

// run runs a command, returning its combined output and an error with the output.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	out := buf.String()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return out, nil
}

// pickNodeNet chooses N so that neither 10.250.N.0/30 nor 10.251.N.0/24
// appears in the root namespace's addresses or routes.
func pickNodeNet(suffix string) (*nodeNet, error) {
	addrs, err := run("ip", "-4", "-o", "addr", "show")
	if err != nil {
		return nil, err
	}
	routes, err := run("ip", "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	used := addrs + routes
	for i := 0; i < 256; i++ {
		a, b := fmt.Sprintf("10.250.%d.", i), fmt.Sprintf("10.251.%d.", i)
		if strings.Contains(used, a) || strings.Contains(used, b) {
			continue
		}
		return &nodeNet{
			index:    i,
			NetNS:    "vcsnap-" + suffix,
			NSPath:   "/run/netns/vcsnap-" + suffix,
			RootLink: "vsr" + suffix,
			NodeLink: "vsn" + suffix,
			HostIP:   a + "1",
			NodeIP:   a + "2",
			LinkCIDR: a + "0/30",
			PodCIDR:  b + "0/24",
			PodGW:    b + "1",
		}, nil
	}
	return nil, errors.New("no free 10.250.N.0/30 + 10.251.N.0/24 pair")
}

// setupNodeNet creates the namespace, the veth pair and the route. undo is
// called with the teardown step even when a later step fails.
func setupNodeNet(suffix string, undo func(string, func() error)) (*nodeNet, error) {
	netMu.Lock()
	defer netMu.Unlock()
	n, err := pickNodeNet(suffix)
	if err != nil {
		return nil, err
	}
	if netnsDirWasMount == nil {
		m := isMountPoint("/run/netns")
		netnsDirWasMount = &m
		_, err := os.Stat("/run/netns")
		netnsDirWasAbsent = errors.Is(err, os.ErrNotExist)
	}
	if _, err := run("ip", "netns", "add", n.NetNS); err != nil {
		return nil, err
	}
	netnsLive++
	undo("delete network namespace "+n.NetNS, func() error { return deleteNetNS(n.NetNS) })
	steps := [][]string{
		{"ip", "link", "add", n.RootLink, "type", "veth", "peer", "name", n.NodeLink, "netns", n.NetNS},
		// IPv4 only: no IPv6 link-local chatter on the veth, the bridge or new pod links.
		{"sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/" + n.RootLink + "/disable_ipv6"},
		{"nsenter", "--net=" + n.NSPath, "--", "sh", "-c", "for c in all default " + n.NodeLink +
			"; do echo 1 > /proc/sys/net/ipv6/conf/$c/disable_ipv6; done"},
		{"ip", "addr", "add", n.HostIP + "/30", "dev", n.RootLink},
		{"ip", "link", "set", n.RootLink, "up"},
		{"ip", "-n", n.NetNS, "link", "set", "lo", "up"},
		{"ip", "-n", n.NetNS, "addr", "add", n.NodeIP + "/30", "dev", n.NodeLink},
		{"ip", "-n", n.NetNS, "link", "set", n.NodeLink, "up"},
		{"ip", "route", "add", n.PodCIDR, "via", n.NodeIP, "dev", n.RootLink},
		// The node namespace routes between the pods' bridge and the veth.
		{"nsenter", "--net=" + n.NSPath, "--", "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"},
	}
	for i, s := range steps {
		if _, err := run(s[0], s[1:]...); err != nil {
			return nil, err
		}
		if i == 0 {
			undo("delete veth "+n.RootLink, func() error {
				if linkExists(n.RootLink) {
					_, err := run("ip", "link", "del", n.RootLink)
					return err
				}
				return nil
			})
		}
	}
	return n, nil
}

// dnatKubernetesService makes the host's kubernetes Service (the first address
// of serviceCIDR, port 443) lead to apiAddr (host:port on the root end of the
// veth) for the pods: a DNAT in the node's namespace, which goes away with it.
func (n *nodeNet) dnatKubernetesService(serviceCIDR, apiAddr string) error {
	svc := firstServiceIP(serviceCIDR)
	if svc == nil || svc.To4() == nil {
		return fmt.Errorf("service CIDR %q: want an IPv4 range", serviceCIDR)
	}
	ip := svc.String()
	_, err := run("nsenter", "--net="+n.NSPath, "--", "iptables", "-w", "-t", "nat", "-A", "PREROUTING",
		"-d", ip+"/32", "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination", apiAddr,
		"-m", "comment", "--comment", "vcsnap rig: kubernetes Service to the host API")
	return err
}

func linkExists(name string) bool {
	_, err := run("ip", "link", "show", "dev", name)
	return err == nil
}

func netnsExists(name string) bool {
	out, err := run("ip", "netns", "list")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}

// deleteNetNS deletes the namespace (which deletes the veth pair, the pods'
// bridge and every iptables rule in it) and, when it was the last one this
// process made and /run/netns was not a mount point before, unmounts the
// /run/netns bind mount that `ip netns add` created.
func deleteNetNS(name string) error {
	netMu.Lock()
	defer netMu.Unlock()
	var errs []error
	if netnsExists(name) {
		if _, err := run("ip", "netns", "del", name); err != nil {
			errs = append(errs, err)
		} else {
			netnsLive--
		}
	}
	if netnsLive == 0 && netnsDirWasMount != nil && !*netnsDirWasMount && isMountPoint("/run/netns") {
		if ents, err := os.ReadDir("/run/netns"); err == nil && len(ents) == 0 {
			if err := unmount("/run/netns"); err != nil {
				errs = append(errs, err)
			} else if netnsDirWasAbsent {
				_ = os.Remove("/run/netns")
			}
		}
	}
	return errors.Join(errs...)
}

// Forwarder relays TCP connections from a listening address to a target:
// it makes a server bound to 127.0.0.1 reachable at the node's HostIP.
type Forwarder struct {
	Addr   string // host:port it listens on
	Target string

	l     net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

// Forward listens on listen (host:port, port 0 picks one) and relays every
// connection to target until the test ends (or Close).
func Forward(t testing.TB, listen, target string) *Forwarder {
	t.Helper()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("forwarder: listen %s: %v", listen, err)
	}
	f := &Forwarder{Addr: l.Addr().String(), Target: target, l: l, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.Close)
	return f
}

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go f.relay(c)
	}
}

func (f *Forwarder) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	if add {
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
	return true
}

func (f *Forwarder) relay(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	if !f.track(c, true) {
		return
	}
	defer f.track(c, false)
	u, err := net.DialTimeout("tcp", f.Target, 10*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	if !f.track(u, true) {
		return
	}
	defer f.track(u, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(u, c)
	go cp(c, u)
	<-done
	<-done
}

// Close stops listening and closes every relayed connection (idempotent).
func (f *Forwarder) Close() {
	f.once.Do(func() {
		f.l.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.conns = nil
		f.mu.Unlock()
		f.wg.Wait()
	})
}
