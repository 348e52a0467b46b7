"""Every pin of the chart validation toolchain, with where it comes from.

Go modules come through the Go module proxy and are checked twice: by the checksum database (as
every `go` command does) and against the `h1:` sums written here, so a moved tag cannot slip in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GoModule:
    path: str
    version: str
    sum: str  # the module zip's h1: hash, as `go mod download -json` reports it

    @property
    def ref(self) -> str:
        return f"{self.path}@{self.version}"


HELM = GoModule("helm.sh/helm/v3", "v3.22.0", "h1:n1if5iQgHYsujPAcO5oonH/KiSNUmqmUF0iGVjSF3AU=")
# Helm's release Makefile stamps these; `go install` alone would report "v3.22" and default
# .Capabilities.KubeVersion to 1.20. Values from helm's Makefile at this tag (client-go v0.37.0).
HELM_LDFLAGS = " ".join(
    (
        "-w -s",
        f"-X helm.sh/helm/v3/internal/version.version={HELM.version}",
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37",
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37",
    )
)
KUBECONFORM = GoModule(
    "github.com/yannh/kubeconform", "v0.8.0", "h1:loDYd3a3spjIFrauqW67CDKF55Oo9R6uvC8AvpVd4ug="
)

# Kubernetes API schemas: api/openapi-spec/swagger.json of these releases. The oldest is the chart's
# kubeVersion floor (Chart.yaml), the newest the latest release the proxy serves.
KUBERNETES = (
    GoModule("k8s.io/kubernetes", "v1.31.14", "h1:UtjLfqvXLuSVDdJ4+NpQCIfFkKkLnAAVmxAEMsnkhjk="),
    GoModule("k8s.io/kubernetes", "v1.37.2", "h1:A2VDEiObzkYqFTKhSsn0ZEb0RlLEXpHWj93gi2HqEwE="),
)
# CRD schemas of the operators the chart can target (ScaledObject, TriggerAuthentication,
# ServiceMonitor, PodMonitor), from the CRD manifests inside their modules.
KEDA = GoModule("github.com/kedacore/keda/v2", "v2.21.0", "h1:R6z2HZvstK4RLUMxroNACzBj74xGxt3kG59b5Xc+Xps=")
KEDA_CRDS = (
    "config/crd/bases/keda.sh_scaledobjects.yaml",
    "config/crd/bases/keda.sh_triggerauthentications.yaml",
)
PROMETHEUS_OPERATOR = GoModule(
    "github.com/prometheus-operator/prometheus-operator",
    "v0.85.0",
    "h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s=",
)
PROMETHEUS_OPERATOR_CRDS = (
    "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
)
# skaffold.yaml is checked against the JSON Schema skaffold publishes for its config version.
SKAFFOLD = GoModule(
    "github.com/GoogleContainerTools/skaffold/v2",
    "v2.16.1",
    "h1:eMrp2qpn/5j2c1P/JqLo+mxcpEIdtokb/tCY2W/05ic=",
)
SKAFFOLD_SCHEMAS_DIR = "docs-v2/content/en/schemas"

# checkov (PyPI) runs in its own virtualenv from a hashed lock (tests/chart/checkov-requirements.txt):
# it pins boto3 and packaging exactly, which would fight the project's own lock.
CHECKOV_VERSION = "3.3.30"
