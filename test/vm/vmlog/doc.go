// Package vmlog decodes the serial-console log of a test/vm guest into a structured result.
//
// The guest's /init (test/vm/init.sh) prints marker lines, which may be preceded on the same line by
// console noise (escape sequences, kernel messages) and may end in "\r":
//
//	VMTEST-BOOTED uptime=4.09 kernel=6.12.95+deb12-cloud-amd64
//	VMTEST-MODULES loaded=19 failed=[]
//	VMTEST-START name=NAME uptime=5.23
//	VMTEST-RESULT name=NAME rc=0 seconds=0.28
//	VMTEST-KERNEL-WARNINGS count=0
//	VMTEST-SETUP-ERROR text
//	VMTEST-RESULT overall rc=0
//
// and the smoke tests print "MESHLET-FEATURE name=... status=... min=... detail=\"...\"" lines.
// A log without the overall marker (kernel panic, hang, timeout) never counts as passed.
package vmlog
