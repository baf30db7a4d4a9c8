// Command csidriver is vcsnap's own small CSI driver for the test rig.
//
// It serves the CSI Identity, Controller and a minimal Node service over a
// unix socket. Volumes are plain directories under --root/volumes, snapshots
// are tar files under --root/snapshots; NodePublishVolume bind-mounts a
// volume's directory onto the kubelet's target path. It is meant for tests
// only: no quota, no topology, one fixed node id.
//
// A volume holding a file named .pending-snapshot gets snapshots that are cut
// but never ready to use (like a cloud snapshot still uploading), so tests can
// exercise timeouts with the real snapshot controllers.
//
// With --kubelet-registration-dir it also registers itself with a kubelet
// (the kubelet plugin-registration API, as node-driver-registrar does), and
// with --registrar-only it does nothing else: it registers the driver already
// serving on --endpoint.
//
//	csidriver --endpoint unix:///tmp/csi.sock --root /tmp/csi-root
//	csidriver --registrar-only --endpoint unix:///tmp/csi.sock \
//	    --kubelet-registration-dir /var/lib/kubelet/plugins_registry
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults shared with the rig (test/rig keeps its own copy of these names).
const (
	DefaultDriverName = "csi.vcsnap.test"
	DefaultNodeID     = "rig-node"
	Version           = "0.1.0"
)

func main() {
	var (
		endpoint = flag.String("endpoint", "", "CSI endpoint, unix:///path/to/csi.sock (or a plain socket path)")
		root     = flag.String("root", "", "directory holding volumes/ and snapshots/")
		name     = flag.String("name", DefaultDriverName, "CSI driver name")
		nodeID   = flag.String("node-id", DefaultNodeID, "node id returned by NodeGetInfo")
		regDir   = flag.String("kubelet-registration-dir", "", "register with the kubelet through a socket in this directory (the kubelet's plugins_registry)")
		regOnly  = flag.Bool("registrar-only", false, "only register the driver serving on --endpoint with the kubelet (needs --kubelet-registration-dir)")
	)
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *regOnly {
		if *endpoint == "" || *regDir == "" {
			log.Fatal("--registrar-only needs --endpoint and --kubelet-registration-dir")
		}
		if err := runRegistrar(*endpoint, *name, *regDir); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *endpoint == "" || *root == "" {
		log.Fatal("--endpoint and --root are required")
	}
	if err := run(*endpoint, *root, *name, *nodeID, *regDir); err != nil {
		log.Fatal(err)
	}
}

func socketPath(endpoint string) (string, error) {
	sock := strings.TrimPrefix(endpoint, "unix://")
	if strings.Contains(sock, "://") {
		return "", fmt.Errorf("only unix:// endpoints are supported, got %q", endpoint)
	}
	return sock, nil
}

// runRegistrar registers the driver on endpoint with the kubelet until SIGTERM.
func runRegistrar(endpoint, name, regDir string) error {
	sock, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return serveRegistration(ctx, regDir, name, sock)
}

func run(endpoint, root, name, nodeID, regDir string) error {
	sock, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	d, err := newDriver(root, name, nodeID)
	if err != nil {
		return err
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen %s: %w", sock, err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(srv, &identity{d: d})
	csi.RegisterControllerServer(srv, &controller{d: d})
	csi.RegisterNodeServer(srv, &node{d: d})

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		log.Printf("received %v, stopping", s)
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			srv.Stop()
		}
	}()
	log.Printf("%s %s serving on %s, root %s, node %s", name, Version, sock, root, nodeID)
	if regDir != "" {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			if err := serveRegistration(ctx, regDir, name, sock); err != nil {
				log.Printf("kubelet registration: %v", err)
				srv.Stop()
			}
		}()
	}
	err = srv.Serve(lis)
	_ = os.Remove(sock)
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	if method == "Probe" && err == nil {
		return resp, err
	}
	if err != nil {
		log.Printf("%s %s: error %v (%v)", method, brief(req), err, time.Since(start))
	} else {
		log.Printf("%s %s: ok (%v)", method, brief(req), time.Since(start))
	}
	return resp, err
}

func brief(req any) string {
	s := fmt.Sprint(req)
	// Never log secrets; the rig passes none, but keep the line short anyway.
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

type identity struct {
	csi.UnimplementedIdentityServer
	d *driver
}

func (i *identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: i.d.name, VendorVersion: Version}, nil
}

func (i *identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE,
		}},
	}}}, nil
}

func (i *identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if _, err := os.Stat(i.d.root); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "root: %v", err)
	}
	return &csi.ProbeResponse{}, nil
}

// errStatus passes gRPC status errors through and turns anything else into Internal.
func errStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}

func ensureDir(p string) error { return os.MkdirAll(filepath.Clean(p), 0o755) }
