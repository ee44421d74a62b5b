// Package monitoring holds no code: its tests check this directory's
// Prometheus rules and Grafana dashboard against a real Prometheus server
// scraping a real cluster, and the nodes' status page in a real headless
// Chromium. Each test skips, saying why, when its program (prometheus,
// chromium) is not installed; .ci/run installs both.
package monitoring
