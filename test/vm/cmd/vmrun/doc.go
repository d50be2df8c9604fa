// Command vmrun boots each kernel of the test/vm matrix under qemu (software emulation) with its base
// initramfs plus an appended cpio of test binaries, decodes the serial console with vmlog, prints a
// summary table and writes a machine-readable summary (results.json).
//
// It is normally started by test/vm/run.sh, which fetches kernels, builds the initramfs images and
// the test cpio first. Exit status: 0 when every kernel passed, 1 when any failed, 2 on usage or
// setup errors.
package main
