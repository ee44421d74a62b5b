package ctl

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvstore/kvstore/node/tlsconf"
)

// certsCommand makes development certificates with crypto/x509
// (node/tlsconf): a CA, node certificates and client certificates.
func (a *app) certsCommand() *cobra.Command {
	var dir string
	var days int
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make a development CA, node certificates and client certificates",
		Long: `Certs makes the files TLS needs, for development and tests: a CA
(ca.pem, ca-key.pem), node certificates signed by it for the names and
addresses clients and peers dial (for server and client authentication: a
node serves, and dials other nodes), and client certificates (client
authentication only: they never pass as a peer's). Files go into --dir;
existing files are never overwritten. Keys are ECDSA P-256, written
readable by their owner only.

For production, use your own CA and keep its key off the nodes.`,
		Example: `  kvctl certs ca --dir certs
  kvctl certs node --dir certs --name n1 --ip 127.0.0.1 --dns localhost
  kvctl certs client --dir certs --name alice`,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", ".", "`directory` of the CA and of the files made")
	cmd.PersistentFlags().IntVar(&days, "days", 365, "validity in days")
	valid := func() (time.Duration, error) {
		if days < 1 {
			return 0, usagef("invalid --days %d: need at least 1", days)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}

	ca := &cobra.Command{
		Use:   "ca",
		Short: "Make a CA: ca.pem and ca-key.pem in --dir",
		Args:  cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			d, err := valid()
			if err != nil {
				return err
			}
			c, err := tlsconf.NewCA("kvstore development CA", d)
			if err != nil {
				return fmt.Errorf("certs ca: %w", err)
			}
			key, err := c.KeyPEM()
			if err != nil {
				return fmt.Errorf("certs ca: %w", err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("certs ca: %w", err)
			}
			certFile, keyFile, err := tlsconf.WriteFiles(dir, "ca", c.CertPEM(), key)
			if err != nil {
				return fmt.Errorf("certs ca: %w", err)
			}
			return a.printf("wrote %s and %s\n", certFile, keyFile)
		}),
	}

	issue := func(kind tlsconf.Kind) *cobra.Command {
		var name string
		var ips, dns []string
		c := &cobra.Command{Args: cobra.NoArgs}
		c.Flags().StringVar(&name, "name", "", "common `name`: the node's name, or the client's user name (required)")
		c.MarkFlagRequired("name")
		if kind == tlsconf.Node {
			c.Use = "node --name NAME --ip ADDR [--dns NAME]"
			c.Short = "Make a node certificate signed by the CA in --dir"
			c.Flags().StringSliceVar(&ips, "ip", nil, "IP `addresses` the node is dialed at (comma list or repeated)")
			c.Flags().StringSliceVar(&dns, "dns", nil, "DNS `names` the node is dialed at (comma list or repeated)")
		} else {
			c.Use = "client --name USER"
			c.Short = "Make a client certificate signed by the CA in --dir"
		}
		c.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
			d, err := valid()
			if err != nil {
				return err
			}
			if name == "" || filepath.Base(name) != name || name == "ca" {
				return usagef("invalid --name %q: want a plain name, not a path, and not ca", name)
			}
			for _, ip := range ips {
				if !isIP(ip) {
					return usagef("invalid --ip %q: want an IP address (names go in --dns)", ip)
				}
			}
			authority, err := tlsconf.LoadCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
			if err != nil {
				return fmt.Errorf("certs %s: %w (make one with kvctl certs ca --dir %s)", cmd.Name(), err, dir)
			}
			cert, key, err := authority.Issue(tlsconf.Request{Kind: kind, Name: name, Hosts: append(ips, dns...), ValidFor: d})
			if err != nil {
				return usagef("%v", err)
			}
			certFile, keyFile, err := tlsconf.WriteFiles(dir, name, cert, key)
			if err != nil {
				return fmt.Errorf("certs %s: %w", cmd.Name(), err)
			}
			return a.printf("wrote %s and %s\n", certFile, keyFile)
		})
		return c
	}
	cmd.AddCommand(ca, issue(tlsconf.Node), issue(tlsconf.Client))
	return cmd
}

func isIP(s string) bool { return net.ParseIP(s) != nil }
