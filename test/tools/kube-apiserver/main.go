// Command kube-apiserver is the Kubernetes API server of k8s.io/kubernetes (pinned in go.mod), built
// by scripts/go-tools.mjs for test/support/kube-control-plane.ts. Its main is upstream's
// cmd/kube-apiserver/apiserver.go. k8s.io/kubernetes requires its staging modules (k8s.io/api,
// k8s.io/apiserver, ...) at v0.0.0 and replaces them with local paths, which a module that requires
// it does not inherit, so `go install` is refused: go.mod's replace block pins each staging module to
// the release published with it (v1.X.Y ships them as v0.X.Y).
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
