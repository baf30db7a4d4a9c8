// Package byname snapshots, restores and resumes a vcluster virtual cluster by its name
// and host namespace, the way `vcsnap snapshot create NAME -n NS` and `vcsnap restore
// NAME -n NS` do: it finds the virtual cluster on the host (package vcluster), takes or
// re-creates its CSI volume snapshots (package volumes), pauses and resumes its control
// plane, and runs vcsnap's engine in a Job beside it with a typed request (package
// engine), whose result comes back through the container's termination message.
//
// A Go program embeds it with a rest.Config of the host cluster:
//
//	cfg, _ := clientcmd.BuildConfigFromFlags("", kubeconfig)
//	res, err := byname.Snapshot(ctx, &byname.Host{Config: cfg}, "team-a", "vc1", byname.SnapshotOptions{
//		Store:   "s3://backups/vc1/nightly?region=eu-west-1",
//		Encrypt: encrypt.Recipients{Keys: []string{"age1..."}},
//		Engine:  byname.EngineOptions{Image: "vcsnap:v1.2.0"},
//		Volumes: byname.VolumeOptions{Include: true},
//		Logger:  slog.Default(),
//	})
//	if err != nil {
//		var ee *byname.EngineError // the engine's own exit code and message
//		...
//	}
//	fmt.Println(res.Create.URL, res.Create.Manifest.Keys)
//
// The engine receives the store's credentials through its temporary Secret (by default
// this process's AWS_* variables, see StoreEnv): the store must be reachable from the
// host cluster's pods with the same URL. Errors wrap ErrOption for options that cannot
// work, vcluster.ErrNotFound for a virtual cluster that is not there, and the storage,
// bundle and datastore sentinels of the step that failed.
package byname
