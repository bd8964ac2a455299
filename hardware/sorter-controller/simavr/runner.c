/*
 * Run the sorter firmware in simavr with UART0 on a pseudo-terminal, paced to real time.
 *
 *   sorter-sim FIRMWARE.elf [--gate-log FILE]
 *
 * Prints "PORT <pty path>" on the first line of stdout once the firmware is up, then runs
 * until SIGINT/SIGTERM.
 * SIGUSR1 resets the AVR (its reset button). --gate-log appends "<t_us> <level>" for each
 * edge of the gate pin (PB1), in emulated microseconds since start: the pin's own truth,
 * independent of what the firmware reports.
 *
 * The bridge is done here rather than with simavr's uart_pty part, whose stop can hang on
 * exit and which symlinks a fixed name in the temp folder. Pacing is done here too, by
 * emulated time: a sleeping core makes simavr jump its clock to the next timer event (the
 * firmware wakes every 64 us, which bounds the jump), and the runner then waits for real
 * time, waking early for bytes from the host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_ioport.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"

#define FREQ 16000000UL
#define PACE_EVERY 1600       /* cycles between I/O and pacing checks (100 us) */
#define BOOT_CYCLES (FREQ / 200) /* 5 ms: the firmware has set up its UART */
#define BEHIND_NS 200000      /* lagging more than this: warn (host-time checks void) */
#define AHEAD_NS 20000        /* sleep when emulated time is this far ahead of real time */

static volatile sig_atomic_t stop_flag, reset_flag;
static int master_fd = -1;
static int xon = 1;
static unsigned char out_buf[4096];
static size_t out_len;
static FILE *gate_log;
static avr_t *avr;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        reset_flag = 1;
    else
        stop_flag = 1;
}

static void flush_out(void)
{
    size_t done = 0;
    while (done < out_len) {
        ssize_t n = write(master_fd, out_buf + done, out_len - done);
        if (n <= 0)
            break; /* nobody reading and the pty is full: drop, as a UART would */
        done += (size_t)n;
    }
    out_len = 0;
}

static void uart_out(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)param;
    if (out_len == sizeof out_buf)
        flush_out();
    out_buf[out_len++] = (unsigned char)value;
}

static void uart_xon(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq, (void)value, (void)param;
    xon = 1;
}

static void uart_xoff(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq, (void)value, (void)param;
    xon = 0;
}

static void gate_edge(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq, (void)param;
    fprintf(gate_log, "%.3f %u\n", avr->cycle * 1e6 / FREQ, value ? 1u : 0u);
    fflush(gate_log);
}

static void no_sleep(avr_t *a, avr_cycle_count_t how_long)
{
    (void)a, (void)how_long;
}

/* simavr's own messages go to stderr: stdout carries only the PORT line. */
static void log_to_stderr(avr_t *a, const int level, const char *format, va_list ap)
{
    (void)a;
    if (level <= LOG_WARNING)
        vfprintf(stderr, format, ap);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int open_pty(char *path, size_t size)
{
    int fd = posix_openpt(O_RDWR | O_NOCTTY);
    if (fd < 0 || grantpt(fd) || unlockpt(fd) || ptsname_r(fd, path, size))
        return -1;
    /* Hold the slave open in raw mode: no echo before the host sets its own mode, and no
     * EIO on the master while no host has the port open. */
    int slave = open(path, O_RDWR | O_NOCTTY);
    if (slave < 0)
        return -1;
    struct termios tio;
    tcgetattr(slave, &tio);
    cfmakeraw(&tio);
    tcsetattr(slave, TCSANOW, &tio);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

int main(int argc, char **argv)
{
    const char *elf = NULL, *gate_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gate-log") && i + 1 < argc)
            gate_path = argv[++i];
        else if (!elf)
            elf = argv[i];
    }
    if (!elf) {
        fprintf(stderr, "usage: %s FIRMWARE.elf [--gate-log FILE]\n", argv[0]);
        return 2;
    }
    avr_global_logger_set(log_to_stderr);
    elf_firmware_t fw;
    memset(&fw, 0, sizeof fw);
    if (elf_read_firmware(elf, &fw)) {
        fprintf(stderr, "sorter-sim: cannot read firmware %s\n", elf);
        return 2;
    }
    /* The firmware carries no AVR_MCU() section, so name the chip and clock here. */
    strcpy(fw.mmcu, "atmega328p");
    fw.frequency = FREQ;
    avr = avr_make_mcu_by_name(fw.mmcu);
    if (!avr) {
        fprintf(stderr, "sorter-sim: simavr has no %s\n", fw.mmcu);
        return 2;
    }
    avr_init(avr);
    avr->sleep = no_sleep; /* pacing is done here, to the host's clock */
    avr_load_firmware(avr, &fw);
    avr->frequency = FREQ;

    uint32_t flags = 0;
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
                            uart_out, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON),
                            uart_xon, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF),
                            uart_xoff, NULL);
    avr_irq_t *uart_in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    if (gate_path) {
        gate_log = fopen(gate_path, "a");
        if (!gate_log) {
            fprintf(stderr, "sorter-sim: cannot write %s: %s\n", gate_path, strerror(errno));
            return 2;
        }
        avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('B'), 1), gate_edge,
                                NULL);
    }

    char path[256];
    master_fd = open_pty(path, sizeof path);
    if (master_fd < 0) {
        fprintf(stderr, "sorter-sim: cannot open a pseudo-terminal: %s\n", strerror(errno));
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);

    unsigned char in_buf[4096];
    size_t in_len = 0, in_pos = 0;
    uint64_t start = now_ns();
    avr_cycle_count_t cycle_base = 0;
    int announced = 0;
    uint64_t last_warning = 0;
    while (!stop_flag) {
        if (reset_flag) {
            reset_flag = 0;
            avr_reset(avr);
            if (gate_log)
                fprintf(gate_log, "reset\n");
            start = now_ns();
            cycle_base = avr->cycle;
            in_len = in_pos = 0;
        }
        /* Run a slice of emulated time (a sleeping core skips ahead in big steps). */
        avr_cycle_count_t slice_end = avr->cycle + PACE_EVERY;
        while (avr->cycle < slice_end) {
            int state = avr_run(avr);
            if (state == cpu_Done || state == cpu_Crashed) {
                fprintf(stderr, "sorter-sim: AVR stopped (state %d)\n", state);
                stop_flag = 1;
                break;
            }
        }
        if (in_pos == in_len) {
            ssize_t n = read(master_fd, in_buf, sizeof in_buf);
            in_len = n > 0 ? (size_t)n : 0;
            in_pos = 0;
        }
        while (xon && in_pos < in_len)
            avr_raise_irq(uart_in, in_buf[in_pos++]);
        flush_out();

        uint64_t emulated = (uint64_t)((avr->cycle - cycle_base) * (1e9 / FREQ));
        uint64_t real = now_ns() - start;
        if (!announced && avr->cycle >= BOOT_CYCLES && emulated + BEHIND_NS >= real) {
            /* Announce the port once the firmware is up and keeping real time, so no first
             * byte meets a UART that is not enabled yet. */
            printf("PORT %s\n", path);
            fflush(stdout);
            announced = 1;
        }
        if (announced && emulated + BEHIND_NS < real
            && (!last_warning || real - last_warning > 1000000000ULL)) {
            /* A busy host: the emulated clock lags and will catch up, which a real board's
             * clock never does. Say so, since the timing it gives is not the firmware's.
             * (Before the port is announced nobody talks to it: a slow start is no lag.) */
            fprintf(stderr, "sorter-sim: %.1f ms behind real time\n", (real - emulated) / 1e6);
            last_warning = real;
        }
        if (emulated > real + AHEAD_NS) {
            /* Ahead of real time: wait, but wake at once for bytes from the host. */
            uint64_t wait = emulated - real;
            struct timespec ts = {(time_t)(wait / 1000000000ULL), (long)(wait % 1000000000ULL)};
            struct pollfd pfd = {master_fd, POLLIN, 0};
            if (in_pos == in_len)
                ppoll(&pfd, 1, &ts, NULL);
            else
                nanosleep(&ts, NULL);
        }
    }
    flush_out();
    if (gate_log)
        fclose(gate_log);
    return 0;
}
