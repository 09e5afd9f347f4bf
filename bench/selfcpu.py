#!/usr/bin/env python3
"""Runs a command; prints `own_cpu_s children_cpu_s peak_kib wall_s own_user_s own_sys_s`: its
own CPU apart from that of the children it waited for (the stage commands), its peak RSS, and
its own CPU split into user and kernel time. /proc/<pid>/stat is
read while the process is a zombie (waitid with WNOWAIT), before it is reaped: there utime and
stime are its own threads', cutime and cstime its waited-for children's."""
import os
import resource
import subprocess
import sys
import time

t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
wall = time.monotonic() - t0
with open(f"/proc/{p.pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
tick = os.sysconf("SC_CLK_TCK")
utime, stime, cutime, cstime = (int(x) / tick for x in fields[11:15])
p.wait()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"{utime + stime:.2f}\t{cutime + cstime:.2f}\t{peak}\t{wall:.2f}\t{utime:.2f}\t{stime:.2f}")
sys.exit(p.returncode)
