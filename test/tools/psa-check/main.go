// Command psa-check evaluates the pod templates of Kubernetes manifests against a Pod Security
// Standards level with the real evaluator of k8s.io/pod-security-admission (the code the API
// server's PodSecurity admission runs), so tests can check deploy/ without a cluster.
//
//	psa-check [--level restricted|baseline|privileged] FILE...
//
// Each file holds YAML or JSON objects (multi-document). For every Pod, Deployment, DaemonSet,
// StatefulSet, ReplicaSet, Job and CronJob it prints one JSON line:
//
//	{"kind","namespace","name","allowed":bool,"forbidden":[{"reason","detail"}]}
//
// Other kinds are ignored. It exits 0 whatever the verdicts; 1 on a read or parse error, 2 on usage.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

type forbidden struct {
	Reason string `json:"reason"`
	Detail string `json:"detail"`
}

type verdict struct {
	Kind      string      `json:"kind"`
	Namespace string      `json:"namespace"`
	Name      string      `json:"name"`
	Allowed   bool        `json:"allowed"`
	Forbidden []forbidden `json:"forbidden"`
}

// workload is what the evaluator needs of one object: its identity and its pod template.
type workload struct {
	kind      string
	meta      metav1.ObjectMeta
	podMeta   metav1.ObjectMeta
	podSpec   corev1.PodSpec
	evaluable bool
}

func main() {
	level := flag.String("level", string(api.LevelRestricted), "Pod Security level: privileged, baseline or restricted")
	flag.Parse()
	lvl, err := api.ParseLevel(*level)
	if err != nil {
		fmt.Fprintf(os.Stderr, "psa-check: --level %q: %v\n", *level, err)
		os.Exit(2)
	}
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: psa-check [--level LEVEL] FILE...")
		os.Exit(2)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "psa-check: evaluator: %v\n", err)
		os.Exit(1)
	}
	lv := api.LevelVersion{Level: lvl, Version: api.LatestVersion()}
	out := json.NewEncoder(os.Stdout)
	for _, path := range flag.Args() {
		workloads, err := readFile(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "psa-check: %s: %v\n", path, err)
			os.Exit(1)
		}
		for _, w := range workloads {
			agg := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &w.podMeta, &w.podSpec))
			v := verdict{
				Kind:      w.kind,
				Namespace: w.meta.Namespace,
				Name:      w.meta.Name,
				Allowed:   agg.Allowed,
				Forbidden: []forbidden{},
			}
			for i, reason := range agg.ForbiddenReasons {
				v.Forbidden = append(v.Forbidden, forbidden{Reason: reason, Detail: agg.ForbiddenDetails[i]})
			}
			if err := out.Encode(v); err != nil {
				fmt.Fprintf(os.Stderr, "psa-check: writing: %v\n", err)
				os.Exit(1)
			}
		}
	}
}

// readFile decodes every document of a file and keeps the workloads.
func readFile(path string) ([]workload, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var workloads []workload
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return workloads, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		w, err := decode(raw)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		if w.evaluable {
			workloads = append(workloads, w)
		}
	}
}

// decode reads one document; an empty one or a kind without a pod template is not evaluable.
func decode(raw []byte) (workload, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(raw, &tm); err != nil {
		return workload{}, err
	}
	w := workload{kind: tm.Kind, evaluable: true}
	var err error
	switch tm.Kind {
	case "Pod":
		var o corev1.Pod
		err = yaml.Unmarshal(raw, &o)
		w.meta, w.podMeta, w.podSpec = o.ObjectMeta, o.ObjectMeta, o.Spec
	case "Deployment":
		var o appsv1.Deployment
		err = yaml.Unmarshal(raw, &o)
		w.meta, w.podMeta, w.podSpec = o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec
	case "DaemonSet":
		var o appsv1.DaemonSet
		err = yaml.Unmarshal(raw, &o)
		w.meta, w.podMeta, w.podSpec = o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec
	case "StatefulSet":
		var o appsv1.StatefulSet
		err = yaml.Unmarshal(raw, &o)
		w.meta, w.podMeta, w.podSpec = o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec
	case "ReplicaSet":
		var o appsv1.ReplicaSet
		err = yaml.Unmarshal(raw, &o)
		w.meta, w.podMeta, w.podSpec = o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec
	case "Job":
		var o batchv1.Job
		err = yaml.Unmarshal(raw, &o)
		w.meta, w.podMeta, w.podSpec = o.ObjectMeta, o.Spec.Template.ObjectMeta, o.Spec.Template.Spec
	case "CronJob":
		var o batchv1.CronJob
		err = yaml.Unmarshal(raw, &o)
		t := o.Spec.JobTemplate.Spec.Template
		w.meta, w.podMeta, w.podSpec = o.ObjectMeta, t.ObjectMeta, t.Spec
	default:
		w.evaluable = false
	}
	if err != nil {
		return workload{}, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return w, nil
}
