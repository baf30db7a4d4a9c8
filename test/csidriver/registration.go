package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// The kubelet's plugin registration: what the node-driver-registrar sidecar
// does for other drivers. The kubelet watches its plugins_registry directory;
// for every socket that appears there it calls GetInfo (plugin type, name,
// the CSI endpoint and the supported versions), then registers the driver
// (NodeGetInfo on the CSI endpoint, the CSINode object) and reports the
// outcome with NotifyRegistrationStatus.

// registrationSocket is the socket name in the kubelet's plugins_registry
// directory (the node-driver-registrar's naming).
func registrationSocket(dir, driverName string) string {
	return filepath.Join(dir, driverName+"-reg.sock")
}

type registrar struct {
	registerapi.UnimplementedRegistrationServer
	name     string
	endpoint string // the CSI socket path the kubelet should use

	mu         sync.Mutex
	registered bool
	failed     chan error // receives a registration failure
}

func (r *registrar) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !st.PluginRegistered {
		log.Printf("kubelet registration of %s failed: %s", r.name, st.Error)
		select {
		case r.failed <- fmt.Errorf("kubelet did not register the plugin: %s", st.Error):
		default:
		}
		return &registerapi.RegistrationStatusResponse{}, nil
	}
	r.mu.Lock()
	r.registered = true
	r.mu.Unlock()
	log.Printf("registered %s with the kubelet (endpoint %s)", r.name, r.endpoint)
	return &registerapi.RegistrationStatusResponse{}, nil
}

// serveRegistration serves the registration socket in dir until ctx ends
// (the socket is then removed, so the kubelet unregisters the driver) or the
// kubelet reports a failed registration.
func serveRegistration(ctx context.Context, dir, driverName, csiSocket string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	abs, err := filepath.Abs(csiSocket)
	if err != nil {
		return err
	}
	sock := registrationSocket(dir, driverName)
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale registration socket: %w", err)
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen %s: %w", sock, err)
	}
	r := &registrar{name: driverName, endpoint: abs, failed: make(chan error, 1)}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, r)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	log.Printf("registration socket %s serving %s for %s", sock, abs, driverName)
	select {
	case <-ctx.Done():
		err = nil
	case err = <-r.failed:
	case err = <-errc:
	}
	srv.Stop()
	_ = os.Remove(sock)
	return err
}
