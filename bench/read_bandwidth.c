// The machine's memory read rate for the decoding roofline (bench/generate_peer.py bandwidth):
// THREADS threads each read their own part of a SIZE_MIB buffer (first touched by that thread)
// as STREAMS sequential streams read in turn one 64-byte line at a time, with 256-bit loads
// OR-ed into accumulators, so that each core keeps several streams' misses in flight as the
// decoding kernels do with their weight panels (numpy's one-stream reductions read less than
// the decoder streams on some machines: BENCHMARKS.md, "A Zen 5 VM"). Prints the best GB/s of
// REPS passes after one untimed pass.
//
//   gcc -O2 -mavx2 -pthread -o /tmp/read_bandwidth bench/read_bandwidth.c
//   /tmp/read_bandwidth [THREADS=2] [STREAMS=4] [SIZE_MIB=1024] [REPS=5]
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int THREADS = 2, STREAMS = 4, REPS = 5;
static size_t BYTES = (size_t)1024 << 20;
static uint8_t *BUF;
static pthread_barrier_t BARRIER;
static double BEST = 1e30;
static volatile uint64_t SINK;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t read_part(const uint8_t *part, size_t bytes) {
  size_t lines = bytes / 64 / STREAMS;  // lines per stream
  __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
  for (size_t i = 0; i < lines; i++) {
    for (int s = 0; s < STREAMS; s++) {
      const uint8_t *p = part + ((size_t)s * lines + i) * 64;
      a0 = _mm256_or_si256(a0, _mm256_load_si256((const __m256i *)p));
      a1 = _mm256_or_si256(a1, _mm256_load_si256((const __m256i *)(p + 32)));
    }
  }
  a0 = _mm256_or_si256(a0, a1);
  uint64_t out[4];
  _mm256_storeu_si256((__m256i *)out, a0);
  return out[0] | out[1] | out[2] | out[3];
}

static void *worker(void *arg) {
  int t = (int)(intptr_t)arg;
  size_t part = BYTES / THREADS / (64 * STREAMS) * (64 * STREAMS);
  uint8_t *mine = BUF + (size_t)t * part;
  memset(mine, t + 1, part);  // first touch: this thread's pages
  uint64_t sink = 0;
  for (int r = -1; r < REPS; r++) {
    pthread_barrier_wait(&BARRIER);
    double t0 = now();
    sink |= read_part(mine, part);
    pthread_barrier_wait(&BARRIER);
    double dt = now() - t0;
    if (t == 0 && r >= 0 && dt < BEST) BEST = dt;
  }
  SINK |= sink;
  return NULL;
}

int main(int argc, char **argv) {
  if (argc > 1) THREADS = atoi(argv[1]);
  if (argc > 2) STREAMS = atoi(argv[2]);
  if (argc > 3) BYTES = (size_t)atol(argv[3]) << 20;
  if (argc > 4) REPS = atoi(argv[4]);
  if (THREADS < 1 || STREAMS < 1 || REPS < 1 || BYTES < (size_t)THREADS * STREAMS * 64) {
    fprintf(stderr, "usage: read_bandwidth [THREADS>=1] [STREAMS>=1] [SIZE_MIB] [REPS>=1]\n");
    return 2;
  }
  if (posix_memalign((void **)&BUF, 2 << 20, BYTES) != 0) {
    fprintf(stderr, "read_bandwidth: cannot allocate %zu bytes\n", BYTES);
    return 1;
  }
  pthread_barrier_init(&BARRIER, NULL, THREADS);
  pthread_t th[THREADS];
  for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
  for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  size_t part = BYTES / THREADS / (64 * STREAMS) * (64 * STREAMS);
  printf("%.1f\n", (double)part * THREADS / BEST / 1e9);
  return SINK == 0xdeadbeef;  // never: keeps the reads
}
