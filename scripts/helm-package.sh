#!/usr/bin/env bash
# Packages the Helm chart (deploy/helm/coldstart) into dist/helm/coldstart-<version>.tgz and prints the
# command that would push it to an OCI registry; it pushes nothing. Links under the chart's files/
# (the PrometheusRule, the dashboard, the CRD and the policies, kept once in deploy/) are packaged as
# the files they point at. helm is the pinned build from scripts/go-tools.mjs (HELM overrides it).
#   scripts/helm-package.sh                     # dist/helm, prints: helm push ... oci://REGISTRY/charts
#   REGISTRY=ghcr.io/my-org DIST=out scripts/helm-package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CHART=deploy/helm/coldstart
DIST=${DIST:-dist/helm}
REGISTRY=${REGISTRY:-REGISTRY}
if [ -z "${HELM:-}" ]; then
  HELM=$(node --input-type=module -e 'import { goToolPath } from "./scripts/go-tools.mjs"; console.log(goToolPath("helm"));')
fi
if [ ! -x "$HELM" ]; then
  echo "helm-package: helm is not built at $HELM: run \`node scripts/go-tools.mjs\` (needs Go on PATH)" >&2
  exit 1
fi
mkdir -p "$DIST"
# helm logs each followed link at level INFO on stderr: noise here.
"$HELM" lint --strict "$CHART" 2> >(grep -v 'found symbolic link' >&2)
out=$("$HELM" package "$CHART" --destination "$DIST" 2> >(grep -v 'found symbolic link' >&2))
echo "$out"
tgz=${out##*: }
echo
echo "To publish (not run here; log in first with: helm registry login ${REGISTRY%%/*}):"
echo "  $HELM push $tgz oci://$REGISTRY/charts"
