// Package ctl is kvctl, the command-line client of kvstore, as a package:
// cmd/kvctl runs it, and so does kvd when it is called as kvctl (the
// container image holds one binary under both names).
//
// It is a thin layer over package api/client: it maps flags to requests and
// responses to text or JSON, and leaves failover and paging to the client.
// Run "kvctl --help" for the commands.
package ctl

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/api/client"
)

const (
	// defaultEndpoints is where a kvd started with no flags listens.
	defaultEndpoints = "127.0.0.1:7379"
	// envEndpoints names the environment variable that sets --endpoints
	// when the flag is not given; the others, the TLS flags.
	envEndpoints = "KVCTL_ENDPOINTS"
	envCACert    = "KVCTL_CACERT"
	envCert      = "KVCTL_CERT"
	envKey       = "KVCTL_KEY"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed: RPC error, key not found, compare failed
	exitUsage   = 2 // the command line is wrong
)

// Main runs kvctl with the process's arguments (after the program name)
// and standard streams, and returns its exit code.
func Main() int {
	// Ctrl-C cancels the RPC in flight instead of killing the process
	// mid-write, so the error says what happened.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
}

// app holds the global flags and the I/O of one kvctl run.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	endpoints string
	output    string
	timeout   time.Duration
	protocol  string
	// user and password: --user NAME[:PASSWORD], --password.
	user, password string
	// stdinLines reads passwords a line at a time from a stdin that is
	// not a terminal.
	stdinLines *bufio.Reader

	// TLS, spelled as etcdctl spells it.
	cacert, cert, key  string
	insecureSkipVerify bool

	// started is set when a command's RunE begins. Errors before that come
	// from cobra checking the command line (flags, arguments, flag groups)
	// and are usage errors.
	started bool
}

// usageError marks a mistake in the command line found by kvctl itself.
// It exits with exitUsage and prints the command's usage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// run runs kvctl with the arguments args (without the program name) and
// returns the process exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	if args == nil {
		args = []string{} // nil makes cobra read os.Args
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)

	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ec exitCodeError
	if errors.As(err, &ec) {
		// The exit code of the command kvctl lock ran, which has said
		// what it had to say itself.
		return ec.code
	}
	var ue usageError
	if a.started && !errors.As(err, &ue) {
		fmt.Fprintf(stderr, "kvctl: %v\n", err)
		return exitFailure
	}
	// Name the subcommand: cobra's messages ("accepts 1 arg(s)") do not.
	if cmd.HasParent() {
		err = fmt.Errorf("%s: %w", cmd.Name(), err)
	}
	fmt.Fprintf(stderr, "kvctl: %v\n", err)
	fmt.Fprint(stderr, cmd.UsageString())
	return exitUsage
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "kvctl",
		Short: "Command-line client of the kvstore key-value store",
		Long: `kvctl reads and writes keys of a kvstore cluster and shows its state.

Keys and values are bytes: arguments are taken as given (UTF-8 on most
systems), values read from standard input are taken byte for byte, and text
output prints them raw. Use -o json for an exact, machine-readable answer
(protojson, where bytes are base64).

kvctl talks to the nodes in --endpoints (or $KVCTL_ENDPOINTS when the flag is
not given), moving on to the next node when one is down or has no leader.

Exit codes: 0 success, 1 the command failed (RPC error, key not found,
compare failed), 2 the command line is wrong.`,
		Example: `  kvctl put greeting hello
  kvctl get greeting
  kvctl --endpoints 10.0.0.1:7379,10.0.0.2:7379 range users/ --prefix
  KVCTL_ENDPOINTS=10.0.0.1:7379 kvctl status -o json`,
		// kvctl prints errors itself, as one line, and usage only for
		// usage errors: see run.
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch a.output {
			case "text", "json":
			default:
				return usagef("invalid --output %q: want text or json", a.output)
			}
			if a.timeout < 0 {
				return usagef("invalid --timeout %v: must not be negative", a.timeout)
			}
			for _, f := range []struct {
				flag, env string
				p         *string
			}{{"endpoints", envEndpoints, &a.endpoints}, {"cacert", envCACert, &a.cacert}, {"cert", envCert, &a.cert}, {"key", envKey, &a.key}} {
				if !cmd.Flags().Changed(f.flag) {
					if env := os.Getenv(f.env); strings.TrimSpace(env) != "" {
						*f.p = env
					}
				}
			}
			if (a.cert == "") != (a.key == "") {
				return usagef("--cert and --key go together: give both")
			}
			if !cmd.Flags().Changed("user") {
				a.user = os.Getenv(envUser)
			}
			if !cmd.Flags().Changed("password") {
				a.password = os.Getenv(envPassword)
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageError{flagError(err)}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.endpoints, "endpoints", defaultEndpoints,
		"comma-separated node `addresses`, host:port or http(s)://host:port; overrides $"+envEndpoints)
	pf.StringVarP(&a.output, "output", "o", "text", "output `format`: text or json")
	pf.DurationVar(&a.timeout, "timeout", 5*time.Second, "time limit for the whole command, 0 for none")
	pf.StringVar(&a.protocol, "protocol", client.ProtocolConnect, "wire `protocol`: connect, grpc or grpcweb")
	pf.StringVar(&a.cacert, "cacert", "", "verify the nodes' certificates with this CA bundle (PEM `file`); speaks TLS (host:port endpoints mean https); overrides $"+envCACert)
	pf.StringVar(&a.cert, "cert", "", "client certificate (PEM `file`) to show the nodes; overrides $"+envCert)
	pf.StringVar(&a.key, "key", "", "key of --cert (PEM `file`); overrides $"+envKey)
	pf.BoolVar(&a.insecureSkipVerify, "insecure-skip-tls-verify", false, "speak TLS without verifying the nodes' certificates (for --auto-tls nodes; never in production)")
	pf.StringVar(&a.user, "user", "", "authenticate as `NAME[:PASSWORD]` (asks for the password when left out); overrides $"+envUser)
	pf.StringVar(&a.password, "password", "", "the --user's `password`; overrides $"+envPassword)

	root.AddCommand(
		a.putCommand(),
		a.getCommand(),
		a.delCommand(),
		a.rangeCommand(),
		a.casCommand(),
		a.txnCommand(),
		a.statusCommand(),
		a.alarmCommand(),
		a.membersCommand(),
		a.leaderCommand(),
		a.groupCommand(),
		a.watchCommand(),
		a.leaseCommand(),
		a.lockCommand(),
		a.compactCommand(),
		a.snapshotCommand(),
		a.benchCommand(),
		a.healthCommand(),
		a.certsCommand(),
		a.gossipKeyCommand(),
		a.userCommand(),
		a.roleCommand(),
		a.authCommand(),
	)
	return root
}

// runE wraps a command's work so that run can tell its errors from usage
// errors.
func (a *app) runE(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		a.started = true
		return f(cmd, args)
	}
}

// newClient returns a client for the global flags and a context bounded by
// --timeout. The caller closes the client and cancels the context.
func (a *app) newClient(ctx context.Context) (*client.Client, context.Context, context.CancelFunc, error) {
	eps := strings.FieldsFunc(a.endpoints, func(r rune) bool { return r == ',' })
	opts, err := a.clientOptions()
	if err != nil {
		return nil, nil, nil, err
	}
	opts = append(opts, client.WithProtocol(a.protocol))
	cred, err := a.credentials()
	if err != nil {
		return nil, nil, nil, err
	}
	if cred != nil {
		opts = append(opts, cred)
	}
	c, err := client.New(eps, opts...)
	if err != nil {
		// Every error of New is about the flags.
		return nil, nil, nil, usageError{err}
	}
	cancel := context.CancelFunc(func() {})
	if a.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, a.timeout)
	}
	return c, ctx, cancel, nil
}

// tlsConfig is the TLS configuration the TLS flags ask for; nil when they
// ask for none (https:// endpoints are then verified with the system's
// roots).
func (a *app) tlsConfig() (*tls.Config, error) {
	if a.cacert == "" && a.cert == "" && !a.insecureSkipVerify {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: a.insecureSkipVerify}
	if a.cacert != "" {
		b, err := os.ReadFile(a.cacert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate in it", a.cacert)
		}
	}
	if a.cert != "" {
		pair, err := tls.LoadX509KeyPair(a.cert, a.key)
		if err != nil {
			return nil, fmt.Errorf("--cert and --key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// clientOptions are the client options of the TLS flags.
func (a *app) clientOptions() ([]client.Option, error) {
	cfg, err := a.tlsConfig()
	if err != nil || cfg == nil {
		return nil, err
	}
	return []client.Option{client.WithTLS(cfg)}, nil
}

// json reports whether -o json was asked for.
func (a *app) json() bool { return a.output == "json" }

// printJSON writes m as one line of protojson: lowerCamelCase field names,
// fields at their zero value left out, bytes in base64.
func (a *app) printJSON(m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	return a.write(append(b, '\n'))
}

// write writes raw output; a failure (a closed pipe, a full disk) is an
// error of the command, since the answer did not get out.
func (a *app) write(b []byte) error {
	if _, err := a.stdout.Write(b); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// printf writes formatted text output.
func (a *app) printf(format string, args ...any) error {
	return a.write(fmt.Appendf(nil, format, args...))
}

// readValue returns the value argument at args[i], or standard input when
// it is absent or "-".
func (a *app) readValue(args []string, i int) ([]byte, error) {
	if len(args) > i && args[i] != "-" {
		return []byte(args[i]), nil
	}
	v, err := io.ReadAll(a.stdin)
	if err != nil {
		return nil, fmt.Errorf("read value from stdin: %w", err)
	}
	return v, nil
}

// flagError says what a number or duration flag wants: pflag's own message
// quotes Go's parser ("strconv.ParseInt: parsing \"x\": invalid syntax").
func flagError(err error) error {
	var ive *pflag.InvalidValueError
	if !errors.As(err, &ive) {
		return err
	}
	var want string
	switch ive.GetFlag().Value.Type() {
	case "duration":
		want = "want a duration such as 5s or 1m"
	case "int", "int64":
		want = "want a whole number"
	case "uint64":
		want = "want a whole number, 0 or more"
	case "float64":
		want = "want a number such as 0.5"
	default:
		return err
	}
	return fmt.Errorf("invalid value %q for --%s: %s", ive.GetValue(), ive.GetFlag().Name, want)
}

// notFound is the error of a call answered NotFound, in the form of the
// others ("op: code: message") but with kvctl's own message.
func notFound(op, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %s", op, connect.CodeNotFound, fmt.Sprintf(format, args...))
}
