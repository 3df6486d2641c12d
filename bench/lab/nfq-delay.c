/*
 * A fixed one-way delay for the lab's client-to-server packets, for kernels without sch_netem: an
 * iptables NFQUEUE rule hands each packet to this process, which gives the verdict (accept) only
 * `delay_ms` after the packet arrived. Requests and ACKs are late by the delay, so TCP sees it as
 * round-trip time (slow start, window growth), as on a real link to S3.
 *
 *   nfq-delay <queue-num> <delay-ms>      (root, inside the client's network namespace)
 *
 * Packets are released in arrival order (the delay is constant), so pending ids sit in a ring and one
 * batch verdict (accept every id up to N) releases all that are due. Only metadata is copied.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RING (1u << 20)

struct pending {
  uint32_t id;
  uint64_t due_ns;
};

static struct pending ring[RING];
static uint32_t head, tail; /* head: next to release; tail: next free */
static uint64_t delay_ns;
static volatile sig_atomic_t stop;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data) {
  (void)msg;
  (void)data;
  struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
  if (ph == NULL) return 0;
  uint32_t id = ntohl(ph->packet_id);
  if (tail - head == RING) {
    /* Full: let this one through now rather than drop it. */
    return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
  }
  ring[tail % RING] = (struct pending){id, now_ns() + delay_ns};
  tail++;
  return 0;
}

static void release_due(struct nfq_q_handle *qh) {
  uint64_t now = now_ns();
  uint32_t last = 0;
  int any = 0;
  while (head != tail && ring[head % RING].due_ns <= now) {
    last = ring[head % RING].id;
    head++;
    any = 1;
  }
  if (any) nfq_set_verdict_batch(qh, last, NF_ACCEPT);
}

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: nfq-delay <queue-num> <delay-ms>\n");
    return 2;
  }
  int queue = atoi(argv[1]);
  delay_ns = (uint64_t)(atof(argv[2]) * 1e6);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);

  struct nfq_handle *h = nfq_open();
  if (h == NULL) {
    perror("nfq_open");
    return 1;
  }
  struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)queue, on_packet, NULL);
  if (qh == NULL) {
    perror("nfq_create_queue");
    return 1;
  }
  if (nfq_set_mode(qh, NFQNL_COPY_META, 0) < 0 || nfq_set_queue_maxlen(qh, RING) < 0) {
    perror("nfq_set_mode/maxlen");
    return 1;
  }
  int fd = nfq_fd(h);
  nfnl_rcvbufsiz(nfq_nfnlh(h), 64u << 20);
  printf("nfq-delay: queue %d, %s ms\n", queue, argv[2]);
  fflush(stdout);

  char buf[65536] __attribute__((aligned));
  while (!stop) {
    int timeout_ms = -1;
    if (head != tail) {
      uint64_t now = now_ns(), due = ring[head % RING].due_ns;
      timeout_ms = due > now ? (int)((due - now + 999999) / 1000000) : 0;
    }
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    if (r < 0 && errno != EINTR) break;
    if (r > 0 && (p.revents & POLLIN)) {
      for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
          if (errno == ENOBUFS) continue; /* the kernel dropped some for a full socket buffer: TCP resends */
          break;
        }
        nfq_handle_packet(h, buf, (int)n);
      }
    }
    release_due(qh);
  }
  /* Let everything still held go before the queue disappears. */
  if (head != tail) nfq_set_verdict_batch(qh, ring[(tail - 1) % RING].id, NF_ACCEPT);
  nfq_destroy_queue(qh);
  nfq_close(h);
  return 0;
}
