// Package chaos is kvstore's failure suite on real networks: it runs the
// container image as five nodes on a bridge network of its own, drives
// clients against them, injects faults between the separate network
// stacks and checks the recorded history with porcupine (see chaos_test.go).
package chaos
