/*
 * Sorter controller firmware, protocol v1 (../PROTOCOL.md), for an ATmega328P at 16 MHz
 * (Arduino Uno / Nano class).
 *
 * Timer1 runs free at F_CPU/8 = 2 ticks per microsecond; its overflow count extends it to
 * a 64-bit clock. Pulses wait in a small queue; the next edge (a pulse start, or the end of
 * the gate's high period) is loaded into output compare A, whose interrupt drives the gate
 * pin within a few microseconds of the tick. Everything that talks (UART) runs in the main
 * loop, so a slow serial line never delays an edge. The main loop sleeps (idle mode) when
 * it has nothing to do; any interrupt wakes it, and Timer2 does so every 64 us.
 *
 * Deliberately no AVR_MCU() marker section: Debian's simavr 1.6 mis-copies .data with it.
 */

#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include <stdint.h>
#include <string.h>

#define FW_NAME "ctc-sorter/1.0"
#define MAX_LINE 64 /* bytes counting the "\n" */
#define MAX_PENDING 16
#define MAX_WIDTH_US 1000000UL
#define MISS_TOLERANCE_US 100
#define WATCHDOG_US 2000000ULL
#define TICKS_PER_US 2
#define MAX_AT_US (1ULL << 61) /* keeps tick arithmetic clear of overflow */

/* Transducer-driver gate: PB1 = OC1A = Arduino D9. */
#define GATE_DDR DDRB
#define GATE_PORT PORTB
#define GATE_BIT PB1

/* ---- clock ------------------------------------------------------------------------- */

static volatile uint64_t overflows;

/* Call with interrupts off. An overflow that happened but is not serviced yet counts. */
static uint64_t ticks_now(void)
{
    uint16_t lo = TCNT1;
    uint64_t hi = overflows;
    if ((TIFR1 & _BV(TOV1)) && lo < 0x8000)
        hi++;
    return (hi << 16) | lo;
}

/* Count a pending overflow here, as its interrupt would, and clear its flag. Call with
 * interrupts off, before any other write to TIFR1: simavr 1.6 loses a pending TOV1 on a
 * TIFR1 write that leaves its bit 0 (on the chip such a write leaves it), and the clock
 * then reads up to a timer period back until the overflow is counted. */
static void take_overflow(void)
{
    if (TIFR1 & _BV(TOV1)) {
        overflows++;
        TIFR1 = _BV(TOV1);
    }
}

static uint64_t now_us(void)
{
    uint8_t sreg = SREG;
    cli();
    uint64_t t = ticks_now() / TICKS_PER_US;
    SREG = sreg;
    return t;
}

/* ---- pulse queue (shared with the interrupts) -------------------------------------- */

struct pulse {
    uint32_t id;        /* 0: free slot */
    uint64_t start;     /* ticks */
    uint32_t width;     /* ticks */
};

static volatile struct pulse queue[MAX_PENDING];
static volatile uint8_t gate_high;
static volatile uint64_t high_until; /* ticks */

/* Outcomes found by the interrupts, sent by the main loop. */
enum { EV_DONE = 1, EV_MISS = 2 };
struct event {
    uint8_t kind;
    uint32_t id;
    uint64_t t_us;
};
#define EVENTS 32 /* > MAX_PENDING: each pending pulse makes at most one */
static volatile struct event events[EVENTS];
static volatile uint8_t ev_head, ev_tail;

static volatile uint32_t n_fired, n_missed;

static void push_event(uint8_t kind, uint32_t id, uint64_t t_us)
{
    uint8_t next = (ev_head + 1) % EVENTS;
    if (next == ev_tail)
        return; /* cannot happen: bounded by MAX_PENDING */
    events[ev_head].kind = kind;
    events[ev_head].id = id;
    events[ev_head].t_us = t_us;
    ev_head = next;
}

/* The earliest pending start, kept up to date so the timer interrupts need not scan the
 * queue each time: the scan is slow on an 8-bit core, and an interrupt busy scanning would
 * delay the next edge. */
static volatile uint8_t n_pending;
static volatile uint64_t earliest;

static void find_earliest(void)
{
    uint8_t found = 0;
    for (uint8_t i = 0; i < MAX_PENDING; i++) {
        if (queue[i].id && (!found || queue[i].start < earliest)) {
            earliest = queue[i].start;
            found = 1;
        }
    }
}

static volatile uint8_t edge_rise;  /* what the compare match loaded in OCR1A is for */
static volatile uint64_t rise_tick; /* when the gate last went high */

static void gate_up(void)
{
    GATE_PORT |= _BV(GATE_BIT);
    rise_tick = ticks_now();
    gate_high = 1;
}

/* Fire what is due, end the gate's high period, and load the next edge into compare A.
 * Call with interrupts off. */
static void service(void)
{
    for (;;) {
        uint64_t now = ticks_now();
        if (n_pending && earliest <= now) {
            for (uint8_t i = 0; i < MAX_PENDING; i++) {
                if (!queue[i].id || queue[i].start > now)
                    continue;
                uint64_t start = queue[i].start;
                uint32_t id = queue[i].id;
                queue[i].id = 0;
                n_pending--;
                if (!gate_high) {
                    /* Not raised by the compare interrupt: due now, or (never) found late. */
                    if (now - start > (uint64_t)MISS_TOLERANCE_US * TICKS_PER_US) {
                        n_missed++;
                        push_event(EV_MISS, id, now / TICKS_PER_US);
                        continue;
                    }
                    gate_up();
                }
                /* The output went high at this pulse's start, or when it rose if later. */
                if (start < rise_tick)
                    start = rise_tick;
                uint64_t end = start + queue[i].width;
                if (end > high_until)
                    high_until = end;
                n_fired++;
                push_event(EV_DONE, id, start / TICKS_PER_US);
            }
            find_earliest();
        }
        if (gate_high && now >= high_until) {
            GATE_PORT &= ~_BV(GATE_BIT);
            gate_high = 0;
        }
        uint64_t next = earliest;
        uint8_t rise = 1;
        if (gate_high && (!n_pending || high_until < next)) {
            next = high_until;
            rise = 0;
        } else if (!n_pending) {
            TIMSK1 &= ~_BV(OCIE1A);
            return;
        }
        if (next <= now + 8)
            continue; /* due within 4 us: do it now rather than race the compare unit */
        if ((next >> 16) != (now >> 16)) {
            TIMSK1 &= ~_BV(OCIE1A); /* a later timer period: the overflow brings it in */
            return;
        }
        edge_rise = rise;
        OCR1A = (uint16_t)next;
        take_overflow();
        if (TIFR1 & _BV(OCF1A))
            TIFR1 = _BV(OCF1A); /* a match of the old value while the interrupt was off */
        TIMSK1 |= _BV(OCIE1A);
        if (ticks_now() + 2 < next)
            return; /* the compare match will come */
    }
}

/* The edge first, the bookkeeping after: the pin moves a couple of microseconds after the
 * tick whatever the queue holds. */
ISR(TIMER1_COMPA_vect)
{
    /* service() reloads the compare whenever the edges change, so the match is current. */
    if (edge_rise) {
        if (!gate_high)
            gate_up();
    } else {
        GATE_PORT &= ~_BV(GATE_BIT);
        gate_high = 0;
    }
    service();
}

ISR(TIMER1_OVF_vect)
{
    overflows++;
    service();
}

/* ---- UART -------------------------------------------------------------------------- */

#define RX_SIZE 256
static volatile uint8_t rx_buf[RX_SIZE];
static volatile uint8_t rx_head, rx_tail;

ISR(USART_RX_vect)
{
    uint8_t c = UDR0;
    uint8_t next = (uint8_t)(rx_head + 1);
    if (next != rx_tail) { /* full: the byte is dropped and its line fails to parse */
        rx_buf[rx_head] = c;
        rx_head = next;
    }
}

static void uart_init(void)
{
    UCSR0A = _BV(U2X0);
    UBRR0 = 16; /* 115200 baud at 16 MHz with U2X (2.1 % error) */
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00); /* 8N1 */
}

static void put(char c)
{
    while (!(UCSR0A & _BV(UDRE0)))
        ;
    UDR0 = c;
}

static void puts_(const char *s)
{
    while (*s)
        put(*s++);
}

/* Decimal without 64-bit division, which is slow on an 8-bit core. */
static void put_u64(uint64_t v)
{
    static const uint64_t pow10[] = {
        10000000000000000000ULL, 1000000000000000000ULL, 100000000000000000ULL,
        10000000000000000ULL, 1000000000000000ULL, 100000000000000ULL, 10000000000000ULL,
        1000000000000ULL, 100000000000ULL, 10000000000ULL, 1000000000ULL, 100000000ULL,
        10000000ULL, 1000000ULL, 100000ULL, 10000ULL, 1000ULL, 100ULL, 10ULL, 1ULL};
    uint8_t started = 0;
    for (uint8_t i = 0; i < sizeof pow10 / sizeof pow10[0]; i++) {
        char d = '0';
        while (v >= pow10[i]) {
            v -= pow10[i];
            d++;
        }
        if (d != '0' || started || i == 19) {
            put(d);
            started = 1;
        }
    }
}

static void line_end(void) { put('\n'); }

static void reply_id(const char *word, uint32_t id)
{
    puts_(word);
    put(' ');
    put_u64(id);
    line_end();
}

static void reply_id_t(const char *word, uint32_t id, uint64_t t)
{
    puts_(word);
    put(' ');
    put_u64(id);
    put(' ');
    put_u64(t);
    line_end();
}

/* ---- protocol ---------------------------------------------------------------------- */

static uint8_t armed;
static uint32_t n_errors;
static uint64_t last_line_us;

enum { E_SYNTAX = 1, E_TOO_LONG, E_NOT_ARMED, E_WIDTH, E_UNKNOWN_ID, E_QUEUE_FULL, E_DUPLICATE };
static const char *const err_text[] = {
    "", "bad syntax", "line too long", "not armed", "width out of range",
    "unknown id", "queue full", "duplicate id pending"};

static void err(uint32_t id, uint8_t code)
{
    n_errors++;
    puts_("ERR ");
    if (id)
        put_u64(id);
    else
        put('-');
    put(' ');
    put('0' + code);
    put(' ');
    puts_(err_text[code]);
    line_end();
}

struct token {
    const char *p;
    uint8_t n;
};

static uint8_t is(const struct token *t, const char *word)
{
    return t->n == strlen(word) && memcmp(t->p, word, t->n) == 0;
}

/* Unsigned decimal, digits only, at most 20 of them, no more than max. */
static uint8_t parse_uint(const struct token *t, uint64_t max, uint64_t *out)
{
    if (t->n == 0 || t->n > 20)
        return 0;
    uint64_t v = 0;
    for (uint8_t i = 0; i < t->n; i++) {
        char c = t->p[i];
        if (c < '0' || c > '9')
            return 0;
        uint8_t d = c - '0';
        if (v > 1844674407370955161ULL || (v == 1844674407370955161ULL && d > 5))
            return 0;
        v = (v << 3) + (v << 1) + d;
    }
    if (v > max)
        return 0;
    *out = v;
    return 1;
}

static uint8_t parse_id(const struct token *t, uint32_t *out)
{
    uint64_t v;
    if (!parse_uint(t, 0x7FFFFFFFUL, &v) || v == 0)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

static void cancel_all(void)
{
    for (uint8_t i = 0; i < MAX_PENDING; i++) {
        cli();
        uint32_t id = queue[i].id;
        if (id) {
            queue[i].id = 0;
            n_pending--;
            find_earliest();
            service();
        }
        sei();
        if (id)
            reply_id("CANCELLED", id);
    }
}

static void cmd_fire(const struct token *tok, uint64_t t)
{
    uint32_t id;
    uint64_t at, width;
    if (!parse_id(&tok[1], &id) || !parse_uint(&tok[2], UINT64_MAX, &at) ||
        !parse_uint(&tok[3], UINT64_MAX, &width)) {
        err(0, E_SYNTAX);
        return;
    }
    if (!armed) {
        err(id, E_NOT_ARMED);
        return;
    }
    if (width == 0 || width > MAX_WIDTH_US) {
        err(id, E_WIDTH);
        return;
    }
    int8_t free_slot = -1;
    for (uint8_t i = 0; i < MAX_PENDING; i++) {
        if (queue[i].id == id) {
            err(id, E_DUPLICATE);
            return;
        }
        if (!queue[i].id && free_slot < 0)
            free_slot = i;
    }
    if (free_slot < 0) {
        err(id, E_QUEUE_FULL);
        return;
    }
    reply_id("ACK", id);
    if (t > MISS_TOLERANCE_US && at < t - MISS_TOLERANCE_US) {
        n_missed++;
        reply_id_t("MISS", id, t);
        return;
    }
    if (at > MAX_AT_US)
        at = MAX_AT_US;
    cli();
    queue[free_slot].start = at * TICKS_PER_US;
    queue[free_slot].width = (uint32_t)width * TICKS_PER_US;
    queue[free_slot].id = id;
    if (!n_pending++ || queue[free_slot].start < earliest)
        earliest = queue[free_slot].start;
    service();
    sei();
}

static void handle_line(const char *line, uint8_t len)
{
    uint64_t t = now_us();
    struct token tok[5];
    uint8_t n = 0;
    for (uint8_t i = 0; i < len;) {
        while (i < len && line[i] == ' ')
            i++;
        if (i == len)
            break;
        uint8_t start = i;
        while (i < len && line[i] != ' ')
            i++;
        if (n == 5) {
            n = 6; /* more words than any request has */
            break;
        }
        tok[n].p = line + start;
        tok[n].n = i - start;
        n++;
    }
    uint64_t v;
    uint32_t id;
    if (n == 2 && is(&tok[0], "PING") && parse_uint(&tok[1], UINT64_MAX, &v)) {
        puts_("PONG ");
        put_u64(v);
        put(' ');
        put_u64(t);
        line_end();
    } else if (n == 1 && is(&tok[0], "INFO")) {
        puts_("INFO proto=1 fw=" FW_NAME " max_width_us=");
        put_u64(MAX_WIDTH_US);
        puts_(" max_pending=");
        put_u64(MAX_PENDING);
        line_end();
    } else if (n == 1 && is(&tok[0], "ARM")) {
        armed = 1;
        puts_("OK ARM\n");
    } else if (n == 1 && is(&tok[0], "DISARM")) {
        armed = 0;
        cancel_all();
        puts_("OK DISARM\n");
    } else if (n == 1 && is(&tok[0], "STATUS")) {
        cli();
        uint8_t pending = n_pending;
        uint32_t fired = n_fired, missed = n_missed;
        sei();
        puts_("STATUS armed=");
        put('0' + armed);
        puts_(" pending=");
        put_u64(pending);
        puts_(" fired=");
        put_u64(fired);
        puts_(" missed=");
        put_u64(missed);
        puts_(" errors=");
        put_u64(n_errors);
        puts_(" t=");
        put_u64(t);
        line_end();
    } else if (n == 2 && is(&tok[0], "CANCEL") && parse_id(&tok[1], &id)) {
        uint8_t found = 0;
        cli();
        for (uint8_t i = 0; i < MAX_PENDING; i++) {
            if (queue[i].id == id) {
                queue[i].id = 0;
                n_pending--;
                found = 1;
            }
        }
        find_earliest();
        service();
        sei();
        if (found)
            reply_id("CANCELLED", id);
        else
            err(id, E_UNKNOWN_ID);
    } else if (n == 4 && is(&tok[0], "FIRE")) {
        cmd_fire(tok, t);
    } else {
        err(0, E_SYNTAX);
    }
}

static void send_events(void)
{
    while (ev_tail != ev_head) {
        cli();
        struct event e = {events[ev_tail].kind, events[ev_tail].id, events[ev_tail].t_us};
        ev_tail = (ev_tail + 1) % EVENTS;
        sei();
        reply_id_t(e.kind == EV_DONE ? "DONE" : "MISS", e.id, e.t_us);
    }
}

/* A steady wake-up for the sleeping main loop. On the board it costs nothing; under simavr
 * it bounds how far the emulated clock skips ahead while the core sleeps, and so how late a
 * byte from the host can be seen (simavr jumps a sleeping core to its next timer event). */
EMPTY_INTERRUPT(TIMER2_COMPA_vect);

static uint8_t idle(void)
{
    return rx_tail == rx_head && ev_tail == ev_head;
}

int main(void)
{
    GATE_DDR |= _BV(GATE_BIT);
    GATE_PORT &= ~_BV(GATE_BIT);
    TCCR1A = 0;
    TCCR1B = _BV(CS11); /* normal mode, clk/8 */
    TIMSK1 = _BV(TOIE1);
    TCCR2A = _BV(WGM21); /* CTC */
    TCCR2B = _BV(CS21);  /* clk/8 */
    OCR2A = 127;         /* 128 ticks: 64 us */
    TIMSK2 = _BV(OCIE2A);
    set_sleep_mode(SLEEP_MODE_IDLE);
    uart_init();
    sei();
    puts_("EVENT RESET\n");

    static char line[MAX_LINE];
    uint8_t len = 0, overflow = 0;
    last_line_us = now_us();
    for (;;) {
        send_events();
        if (armed && now_us() - last_line_us >= WATCHDOG_US) {
            armed = 0;
            cancel_all();
            puts_("EVENT DISARMED watchdog\n");
        }
        cli();
        if (idle()) {
            /* sei takes effect after the next instruction, so no wake-up is lost between
             * the check and the sleep. */
            sleep_enable();
            sei();
            sleep_cpu();
            sleep_disable();
        }
        sei();
        if (rx_tail == rx_head)
            continue;
        char c = rx_buf[rx_tail];
        rx_tail++;
        if (c == '\n') {
            if (overflow) {
                last_line_us = now_us();
                err(0, E_TOO_LONG);
            } else if (len) {
                last_line_us = now_us();
                handle_line(line, len);
            }
            len = 0;
            overflow = 0;
        } else if (c == '\r' || overflow) {
            continue;
        } else if (len >= MAX_LINE - 1) {
            overflow = 1;
            len = 0;
        } else {
            line[len++] = c;
        }
    }
}
