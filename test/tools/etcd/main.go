// Command etcd is the etcd server (go.etcd.io/etcd/server/v3, pinned in go.mod), built by
// scripts/go-tools.mjs for test/support/kube-control-plane.ts. It is the upstream binary's main
// (go.etcd.io/etcd/v3's main.go): that module replaces its submodules with local paths, so
// `go install go.etcd.io/etcd/v3@version` is refused and this wrapper requires the server instead.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
