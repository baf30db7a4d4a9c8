package byname

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/cli"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// ErrChart: the chart to install a virtual cluster from could not be found or loaded.
var ErrChart = errors.New("the vcluster chart could not be loaded")

// restGetter hands helm the host's rest.Config (helm's own getter reads kubeconfig files).
type restGetter struct {
	cfg *rest.Config
	ns  string
}

func (g restGetter) ToRESTConfig() (*rest.Config, error) { return rest.CopyConfig(g.cfg), nil }

func (g restGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(g.cfg)
	if err != nil {
		return nil, err
	}
	return memory.NewMemCacheClient(dc), nil
}

func (g restGetter) ToRESTMapper() (meta.RESTMapper, error) {
	dc, err := g.ToDiscoveryClient()
	if err != nil {
		return nil, err
	}
	return restmapper.NewShortcutExpander(restmapper.NewDeferredDiscoveryRESTMapper(dc), dc, nil), nil
}

func (g restGetter) ToRawKubeConfigLoader() clientcmd.ClientConfig {
	return clientcmd.NewDefaultClientConfig(clientcmdapi.Config{}, &clientcmd.ConfigOverrides{Context: clientcmdapi.Context{Namespace: g.ns}})
}

func helmConfig(cfg *rest.Config, namespace string, log *slog.Logger) (*action.Configuration, error) {
	ac := new(action.Configuration)
	if err := ac.Init(restGetter{cfg: cfg, ns: namespace}, namespace, "secret", func(format string, v ...any) {
		log.Debug("helm: " + fmt.Sprintf(format, v...))
	}); err != nil {
		return nil, fmt.Errorf("helm: %w", err)
	}
	return ac, nil
}

// loadChart loads the vcluster chart from a directory or .tgz, or from a chart
// repository URL or an oci:// reference at the given version.
func loadChart(src, name, version string) (*chart.Chart, error) {
	if src == "" {
		return nil, fmt.Errorf("%w: say where the chart %s %s comes from (a directory, a .tgz, a chart repository URL or an oci:// reference)", ErrOption, name, version)
	}
	path := src
	if strings.Contains(src, "://") {
		settings := cli.New()
		opts := action.ChartPathOptions{Version: version}
		ref := src
		if !strings.HasPrefix(src, "oci://") {
			opts.RepoURL, ref = src, name
		}
		var err error
		if path, err = opts.LocateChart(ref, settings); err != nil {
			return nil, fmt.Errorf("%w: %s %s from %s: %w", ErrChart, name, version, src, err)
		}
	} else if _, err := os.Stat(src); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrChart, err)
	}
	ch, err := loader.Load(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrChart, path, err)
	}
	if name != "" && ch.Name() != name {
		return nil, fmt.Errorf("%w: %s is chart %q, the bundle's virtual cluster was installed from %q", ErrChart, src, ch.Name(), name)
	}
	return ch, nil
}

// helmInstall installs the release without waiting (the caller waits for the control
// plane itself).
func helmInstall(ctx context.Context, cfg *rest.Config, namespace, name string, ch *chart.Chart, values []byte, log *slog.Logger) error {
	ac, err := helmConfig(cfg, namespace, log)
	if err != nil {
		return err
	}
	vals := map[string]any{}
	if len(values) > 0 {
		if err := yaml.Unmarshal(values, &vals); err != nil {
			return fmt.Errorf("the recorded values: %w", err)
		}
	}
	in := action.NewInstall(ac)
	in.ReleaseName, in.Namespace, in.Timeout = name, namespace, 5*time.Minute
	if _, err := in.RunWithContext(ctx, ch, vals); err != nil {
		return fmt.Errorf("helm install %s -n %s (chart %s %s): %w", name, namespace, ch.Name(), ch.Metadata.Version, err)
	}
	return nil
}

// helmUninstall removes the release (what a failed create leaves of it).
func helmUninstall(cfg *rest.Config, namespace, name string, log *slog.Logger) error {
	ac, err := helmConfig(cfg, namespace, log)
	if err != nil {
		return err
	}
	u := action.NewUninstall(ac)
	u.Wait, u.Timeout = true, 3*time.Minute
	if _, err := u.Run(name); err != nil && !strings.Contains(err.Error(), "not found") {
		return fmt.Errorf("helm uninstall %s -n %s: %w", name, namespace, err)
	}
	return nil
}
