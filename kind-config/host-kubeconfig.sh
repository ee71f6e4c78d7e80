#!/bin/sh
# Write a kubeconfig for a warmlet running on the host, as the least-privilege ServiceAccount
# kube-system/warmlet (kind-config/rbac.yaml), from the current kubectl context:
#
#   kind-config/host-kubeconfig.sh DIR [DURATION]
#
# DIR/kubeconfig  server and CA of the current context, a TokenRequest token (default 24h) of the SA
# DIR/ca.crt      the cluster CA (warmlet's --client-ca-file: it signs the apiserver's kubelet client cert)
set -eu
dir=${1:?usage: host-kubeconfig.sh DIR [DURATION]}
duration=${2:-24h}
mkdir -p "$dir"
server=$(kubectl config view --minify --raw -o 'jsonpath={.clusters[0].cluster.server}')
ca_data=$(kubectl config view --minify --raw -o 'jsonpath={.clusters[0].cluster.certificate-authority-data}')
if [ -n "$ca_data" ]; then
  printf '%s' "$ca_data" | base64 -d > "$dir/ca.crt"
else
  cp "$(kubectl config view --minify --raw -o 'jsonpath={.clusters[0].cluster.certificate-authority}')" "$dir/ca.crt"
fi
token=$(kubectl -n kube-system create token warmlet --duration="$duration")
umask 077
cat > "$dir/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: cluster
    cluster:
      server: $server
      certificate-authority: $(cd "$dir" && pwd)/ca.crt
users:
  - name: warmlet
    user:
      token: $token
contexts:
  - name: warmlet
    context: {cluster: cluster, user: warmlet}
current-context: warmlet
KUBECONFIG
echo "wrote $dir/kubeconfig (ServiceAccount kube-system/warmlet, token valid $duration) and $dir/ca.crt"
