package ctl

import (
	"errors"
	"fmt"
	"io"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

func (a *app) casCommand() *cobra.Command {
	var (
		expectValue                 string
		expectVersion, expectModRev int64
	)
	cmd := &cobra.Command{
		Use:   "cas KEY [NEW_VALUE] (--expect-value OLD | --expect-version N | --expect-mod-rev N)",
		Short: "Compare and swap: set a key only if it is as expected",
		Long: `Cas sets KEY to NEW_VALUE in one transaction, only if KEY still holds
what exactly one of the --expect flags says:

  --expect-value OLD   KEY holds the value OLD
  --expect-version N   KEY has been changed N times since its creation;
                       --expect-version 0 means KEY does not exist, so the
                       put only creates it
  --expect-mod-rev N   KEY was last changed at revision N

When NEW_VALUE is omitted or is "-", it is read from standard input, byte for
byte.

On success kvctl prints SUCCEEDED and exits with 0. When the comparison does
not hold, nothing is written: kvctl prints "compare failed" and the key's
current version and revision on standard error and exits with 1. With
-o json the TxnResponse is printed either way; its last response shows the
key as it is.`,
		Example: `  kvctl cas leader me --expect-version 0
  kvctl cas config v2 --expect-value v1
  kvctl cas counter 8 --expect-mod-rev 1234 -o json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			key := []byte(args[0])
			cmp := &kvstorev1.Compare{Key: key, Result: kvstorev1.CompareResult_COMPARE_RESULT_EQUAL}
			switch f := cmd.Flags(); {
			case f.Changed("expect-value"):
				cmp.Target = &kvstorev1.Compare_Value{Value: []byte(expectValue)}
			case f.Changed("expect-version"):
				cmp.Target = &kvstorev1.Compare_Version{Version: expectVersion}
			default:
				cmp.Target = &kvstorev1.Compare_ModRevision{ModRevision: expectModRev}
			}
			value, err := a.readValue(args, 1)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.KV.Txn(ctx, connect.NewRequest(&kvstorev1.TxnRequest{
				Compare: []*kvstorev1.Compare{cmp},
				Success: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Put{
					Put: &kvstorev1.PutRequest{Key: key, Value: value},
				}}},
				// On failure, read the key so the error can say why.
				Failure: []*kvstorev1.RequestOp{{Request: &kvstorev1.RequestOp_Get{
					Get: &kvstorev1.GetRequest{Key: key},
				}}},
			}))
			if err != nil {
				return fmt.Errorf("cas: %w", err)
			}
			if a.json() {
				err = a.printJSON(resp.Msg)
			} else if resp.Msg.GetSucceeded() {
				err = a.printf("SUCCEEDED\n")
			}
			if err != nil || resp.Msg.GetSucceeded() {
				return err
			}
			var kv *kvstorev1.KeyValue
			if r := resp.Msg.GetResponses(); len(r) > 0 {
				kv = r[0].GetGet().GetKv()
			}
			if kv == nil {
				return fmt.Errorf("cas: compare failed: key %q does not exist", key)
			}
			return fmt.Errorf("cas: compare failed: key %q is at version %d, mod revision %d",
				key, kv.GetVersion(), kv.GetModRevision())
		}),
	}
	f := cmd.Flags()
	f.StringVar(&expectValue, "expect-value", "", "swap only if the key holds the value `OLD`")
	f.Int64Var(&expectVersion, "expect-version", 0, "swap only if the key's version is `N` (0: the key does not exist)")
	f.Int64Var(&expectModRev, "expect-mod-rev", 0, "swap only if the key was last changed at revision `N`")
	cmd.MarkFlagsOneRequired("expect-value", "expect-version", "expect-mod-rev")
	cmd.MarkFlagsMutuallyExclusive("expect-value", "expect-version", "expect-mod-rev")
	return cmd
}

func (a *app) txnCommand() *cobra.Command {
	var jsonIn bool
	cmd := &cobra.Command{
		Use:   "txn --json < REQUEST.json",
		Short: "Run a transaction given as JSON",
		Long: `Txn reads a kvstore.v1.TxnRequest in protojson from standard input and runs
it: if every compare holds, the success operations run, otherwise the
failure operations, atomically and in one revision.

In the JSON, keys and values are base64 ("Zm9v" is "foo"), enums are
their names, and field names are lowerCamelCase or as in the .proto file.
--json is required: it names the only input format so far.

kvctl prints SUCCEEDED or FAILED, then one block per operation of the branch
that ran: OK for a put, the number deleted for a delete, key and value lines
for a get or a range. A failed comparison is an answer, not an error: the
exit code is 0 either way (see "kvctl cas" for one that exits with 1). With
-o json it prints the TxnResponse.`,
		Example: `  # Create foo=bar only if foo does not exist; otherwise read it.
  echo '{"compare":[{"key":"Zm9v","result":"COMPARE_RESULT_EQUAL","version":"0"}],
         "success":[{"put":{"key":"Zm9v","value":"YmFy"}}],
         "failure":[{"get":{"key":"Zm9v"}}]}' | kvctl txn --json`,
		Args: cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			in, err := io.ReadAll(a.stdin)
			if err != nil {
				return fmt.Errorf("read request from stdin: %w", err)
			}
			req := &kvstorev1.TxnRequest{}
			if err := protojson.Unmarshal(in, req); err != nil {
				return fmt.Errorf("txn: parse request: %w", err)
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.KV.Txn(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("txn: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			return a.printTxn(resp.Msg)
		}),
	}
	cmd.Flags().BoolVar(&jsonIn, "json", false, "read the request as protojson from standard input")
	if err := cmd.MarkFlagRequired("json"); err != nil {
		panic(err) // only if the flag above did not exist
	}
	return cmd
}

// printTxn prints a TxnResponse as text.
func (a *app) printTxn(resp *kvstorev1.TxnResponse) error {
	outcome := "FAILED"
	if resp.GetSucceeded() {
		outcome = "SUCCEEDED"
	}
	if err := a.printf("%s\n", outcome); err != nil {
		return err
	}
	for _, op := range resp.GetResponses() {
		var err error
		switch r := op.GetResponse().(type) {
		case *kvstorev1.ResponseOp_Put:
			err = a.printf("OK\n")
			if kv := r.Put.GetPrevKv(); err == nil && kv != nil {
				err = a.printKV(kv, false)
			}
		case *kvstorev1.ResponseOp_Delete:
			err = a.printf("%d\n", r.Delete.GetDeleted())
			if err == nil {
				err = a.printKVs(r.Delete.GetPrevKvs(), false)
			}
		case *kvstorev1.ResponseOp_Get:
			if kv := r.Get.GetKv(); kv != nil {
				err = a.printKV(kv, false)
			}
		case *kvstorev1.ResponseOp_Range:
			err = a.printKVs(r.Range.GetKvs(), false)
		default:
			err = errors.New("txn: answer holds an operation kvctl does not know; use -o json")
		}
		if err != nil {
			return err
		}
	}
	return nil
}
