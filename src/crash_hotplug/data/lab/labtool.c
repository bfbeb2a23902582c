/* labtool: a small static helper for the crash-hotplug lab guest.
 *
 *   labtool now                              print CLOCK_MONOTONIC in ns
 *   labtool wr FILE VALUE                    one write() of VALUE to FILE; prints "<rc> <errno> <ns>"
 *   labtool time CMD [ARG...]                run CMD, print "<exit status> <ns>" on stderr-free stdout
 *   labtool kfl KERNEL INITRD FLAGS CMDLINE  raw kexec_file_load(2) with FLAGS (e.g. 0xa =
 *                                            KEXEC_FILE_ON_CRASH|KEXEC_FILE_DEBUG); prints "<rc> <errno>"
 *   labtool out PORT                         copy stdin to I/O port PORT (QEMU's isa-debugcon) with
 *                                            rep outsb; prints "<bytes> <errno>"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "now")) {
		printf("%lld\n", now_ns());
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "wr")) {
		int fd = open(argv[2], O_WRONLY);
		if (fd < 0) {
			printf("-1 %d 0\n", errno);
			return 1;
		}
		long long t0 = now_ns();
		ssize_t rc = write(fd, argv[3], strlen(argv[3]));
		long long t1 = now_ns();
		int err = rc < 0 ? errno : 0;
		close(fd);
		printf("%zd %d %lld\n", rc, err, t1 - t0);
		return rc < 0;
	}
	if (argc >= 3 && !strcmp(argv[1], "time")) {
		long long t0 = now_ns();
		pid_t pid = fork();
		if (pid == 0) {
			int devnull = open("/dev/null", O_WRONLY);
			if (devnull >= 0) {
				dup2(devnull, 1);
				dup2(devnull, 2);
			}
			execvp(argv[2], argv + 2);
			_exit(127);
		}
		int status = 0;
		waitpid(pid, &status, 0);
		long long t1 = now_ns();
		printf("%d %lld\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128, t1 - t0);
		return 0;
	}
	if (argc == 6 && !strcmp(argv[1], "kfl")) {
		int kfd = open(argv[2], O_RDONLY);
		int ifd = open(argv[3], O_RDONLY);
		unsigned long flags = strtoul(argv[4], NULL, 0);
		if (kfd < 0 || ifd < 0) {
			printf("-1 %d\n", errno);
			return 1;
		}
		long rc = syscall(SYS_kexec_file_load, kfd, ifd, strlen(argv[5]) + 1, argv[5], flags);
		printf("%ld %d\n", rc, rc < 0 ? errno : 0);
		return rc < 0;
	}
	if (argc == 3 && !strcmp(argv[1], "out")) {
		unsigned long port = strtoul(argv[2], NULL, 0);
		static unsigned char buf[1 << 16];
		long long total = 0;
		ssize_t n;
		if (ioperm(port, 1, 1) < 0) {
			printf("-1 %d\n", errno);
			return 1;
		}
		while ((n = read(0, buf, sizeof(buf))) > 0) {
			outsb(port, buf, n);
			total += n;
		}
		printf("%lld %d\n", total, n < 0 ? errno : 0);
		return n < 0;
	}
	fprintf(stderr, "usage: labtool now | wr FILE VALUE | time CMD... | kfl KERNEL INITRD FLAGS CMDLINE | out PORT\n");
	return 2;
}
