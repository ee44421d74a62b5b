package ctl

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvstore/kvstore/api/client"
)

func (a *app) healthCommand() *cobra.Command {
	var live bool
	cmd := &cobra.Command{
		Use:   "health",
		Short: "Check that a node is ready (or, with --live, up)",
		Long: `Health asks each endpoint's /readyz (the node has a leader and a healthy
state machine), or /healthz with --live (the process serves HTTP), and
exits 0 if every endpoint says ok, 1 otherwise. It prints one line per
endpoint. The container image's HEALTHCHECK runs it.`,
		Example: `  kvctl health
  kvctl health --live --endpoints 10.0.0.2:7379`,
		Args: cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			path := "/readyz"
			if live {
				path = "/healthz"
			}
			ctx, cancel := cmd.Context(), func() {}
			if a.timeout > 0 {
				ctx, cancel = context.WithTimeout(ctx, a.timeout)
			}
			defer cancel()
			tlsCfg, err := a.tlsConfig()
			if err != nil {
				return err
			}
			hc := http.DefaultClient
			if tlsCfg != nil {
				hc = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}}
			}
			var bad []string
			for _, e := range strings.FieldsFunc(a.endpoints, func(r rune) bool { return r == ',' }) {
				ep := e
				if tlsCfg != nil && !strings.Contains(ep, "://") {
					ep = "https://" + strings.TrimSpace(ep)
				}
				base, err := client.EndpointURL(ep)
				if err != nil {
					return usagef("--endpoints %q: %v", e, err)
				}
				msg, err := get(ctx, hc, base+path)
				if err != nil {
					bad = append(bad, e)
					msg = err.Error()
				}
				if err := a.printf("%s %s\n", e, msg); err != nil {
					return err
				}
			}
			if len(bad) > 0 {
				return fmt.Errorf("health: %s not ok", strings.Join(bad, ", "))
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&live, "live", false, "ask /healthz (the process is up) instead of /readyz")
	return cmd
}

// get fetches url and returns its body's first line if it answered 200.
func get(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, line)
	}
	return line, nil
}
