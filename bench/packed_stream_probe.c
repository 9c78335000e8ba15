// Probe of the packed decoding kernel's weight stream (worker/src/kernels/packed_simd.rs) on
// cold weights: the same k-major 16-column panels and the same AVX-512 micro-kernel shapes,
// written in C so that block shapes, layouts and software prefetch can be tried in seconds.
// BENCHMARKS.md, "Prefetching the 8-row stream", quotes its figures.
//
//   gcc -O3 -mavx512f -mfma -pthread -o /tmp/packed_probe bench/packed_stream_probe.c
//   /tmp/packed_probe VARIANT [THREADS=2] [COPIES=200] [PF=0]
//
// The gate|up shape of SmolLM2-135M (N = 3072 outputs, K = 576), COPIES packed copies
// (200 = 1.4 GB, past any cache) visited in turn, so every pass reads cold weights; THREADS
// threads split the panel groups as rayon's pool does, with a barrier per pass. Prints the mean
// and best weight read rate over 2·COPIES passes (after one untimed pass over every copy).
// PF > 0: prefetch each panel PF lines (k-steps) ahead into L1 (_MM_HINT_T0); PF < 0: -PF lines
// ahead into L2 (_MM_HINT_T1; variants 0-7 and 13 only). Variants (rows × panels per group):
//   0: 8 × 3 (the kernel's batch-8 block)    1: 8 × 2            2: 4 × 4, rows 0-3 then 4-7
//   3: 8 × 1                                 4: 1 × 4 (batch 1)  5: 4 × 6, twice
//   6: 4 × 3, twice                          7: 4 × 2, twice     13: 4 × 4 (batch 4)
//   8-12: as 0, 1-row × 3, 4 × 3 twice, 8 × 2, 4 × 4 twice, on panels interleaved three (or
//   two, four) at a time (one stream per group instead of one per panel)
// Every accumulator is summed into the output, so the compiler cannot drop any of the work.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define PANEL 16
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static int N=3072, K=576, ROWS=8, COPIES=200, NT=2, VARIANT=0, PF=0;
static float **W; static float *X; static float *Y;

// C panels x R rows from panel pointer p (k-major), rows x (R x K)
#define KERNEL(C,R) static void k_##C##_##R(const float*p,const float*x,int k,float*tile){ \
  __m512 acc[R][C]; for(int r=0;r<R;r++)for(int c=0;c<C;c++)acc[r][c]=_mm512_setzero_ps(); \
  for(int i=0;i<k;i++){ __m512 w[C]; for(int c=0;c<C;c++){ if(PF) if(PF>0) _mm_prefetch((const char*)(p+c*PANEL*k+(i+PF)*PANEL),_MM_HINT_T0); else _mm_prefetch((const char*)(p+c*PANEL*k+(i-PF)*PANEL),_MM_HINT_T1); w[c]=_mm512_loadu_ps(p+c*PANEL*k+i*PANEL);} \
    for(int r=0;r<R;r++){ __m512 xb=_mm512_set1_ps(x[r*k+i]); for(int c=0;c<C;c++) acc[r][c]=_mm512_fmadd_ps(w[c],xb,acc[r][c]); } } \
  for(int r=0;r<R;r++)for(int c=0;c<C;c++) _mm512_storeu_ps(tile+(r*C+c)*PANEL,acc[r][c]); }
#define KERNELI(C,R) static void ki_##C##_##R(const float*p,const float*x,int k,float*tile){ \
  __m512 acc[R][C]; for(int r=0;r<R;r++)for(int c=0;c<C;c++)acc[r][c]=_mm512_setzero_ps(); \
  for(int i=0;i<k;i++){ __m512 w[C]; if(PF) _mm_prefetch((const char*)(p+(i+PF)*C*PANEL),_MM_HINT_T0); for(int c=0;c<C;c++){ w[c]=_mm512_loadu_ps(p+i*C*PANEL+c*PANEL);} \
    for(int r=0;r<R;r++){ __m512 xb=_mm512_set1_ps(x[r*k+i]); for(int c=0;c<C;c++) acc[r][c]=_mm512_fmadd_ps(w[c],xb,acc[r][c]); } } \
  for(int r=0;r<R;r++)for(int c=0;c<C;c++) _mm512_storeu_ps(tile+(r*C+c)*PANEL,acc[r][c]); }
KERNELI(3,8) KERNELI(3,1) KERNELI(3,4) KERNELI(2,8) KERNELI(4,4)
KERNEL(3,8) KERNEL(2,8) KERNEL(4,4) KERNEL(1,8) KERNEL(4,1) KERNEL(6,4) KERNEL(3,4) KERNEL(2,4)

typedef struct {int t; int copy;} Arg;
static pthread_barrier_t bar; static int REPS; static double *T;
static void run_group(const float*w, int g){
  int panels=N/PANEL; float tile[32*PANEL]={0};
  switch(VARIANT){
    case 0: { int pp=3; int p0=g*pp; if(p0>=panels) return; k_3_8(w+p0*PANEL*K,X,K,tile); break; }
    case 1: { int pp=2; int p0=g*pp; if(p0>=panels) return; k_2_8(w+p0*PANEL*K,X,K,tile); break; }
    case 2: { int pp=4; int p0=g*pp; if(p0>=panels) return; k_4_4(w+p0*PANEL*K,X,K,tile); k_4_4(w+p0*PANEL*K,X+4*K,K,tile); break; }
    case 3: { int pp=1; int p0=g*pp; k_1_8(w+p0*PANEL*K,X,K,tile); break; }
    case 4: { int pp=4; int p0=g*pp; if(p0>=panels) return; k_4_1(w+p0*PANEL*K,X,K,tile); break; }  // 1 row
    case 5: { int pp=6; int p0=g*pp; if(p0>=panels) return; k_6_4(w+p0*PANEL*K,X,K,tile); k_6_4(w+p0*PANEL*K,X+4*K,K,tile); break; }
    case 6: { int pp=3; int p0=g*pp; if(p0>=panels) return; k_3_4(w+p0*PANEL*K,X,K,tile); k_3_4(w+p0*PANEL*K,X+4*K,K,tile); break; }
    case 7: { int pp=2; int p0=g*pp; if(p0>=panels) return; k_2_4(w+p0*PANEL*K,X,K,tile); k_2_4(w+p0*PANEL*K,X+4*K,K,tile); break; }
    case 13: { int pp=4; int p0=g*pp; if(p0>=panels) return; k_4_4(w+p0*PANEL*K,X,K,tile); break; }
    case 8: { int pp=3; int p0=g*pp; if(p0>=panels) return; ki_3_8(w+p0*PANEL*K,X,K,tile); break; }
    case 9: { int pp=3; int p0=g*pp; if(p0>=panels) return; ki_3_1(w+p0*PANEL*K,X,K,tile); break; }
    case 10: { int pp=3; int p0=g*pp; if(p0>=panels) return; ki_3_4(w+p0*PANEL*K,X,K,tile); ki_3_4(w+p0*PANEL*K,X+4*K,K,tile); break; }
    case 11: { int pp=2; int p0=g*pp; if(p0>=panels) return; ki_2_8(w+p0*PANEL*K,X,K,tile); break; }
    case 12: { int pp=4; int p0=g*pp; if(p0>=panels) return; ki_4_4(w+p0*PANEL*K,X,K,tile); ki_4_4(w+p0*PANEL*K,X+4*K,K,tile); break; }
  }
  { float s=0; for(int j=0;j<32*PANEL;j++) s+=tile[j]; Y[g]+=s; }
}
static int ppg(){int t[]={3,2,4,1,4,6,3,2,3,3,3,2,4,4}; return t[VARIANT];}
static void* worker(void*a){ Arg*x=(Arg*)a; int groups=(N/PANEL+ppg()-1)/ppg(); int per=(groups+NT-1)/NT;
  for(int rep=0;rep<REPS;rep++){ pthread_barrier_wait(&bar); double t0=now();
    for(int g=x->t*per; g<(x->t+1)*per && g<groups; g++) run_group(W[rep%COPIES],g);
    pthread_barrier_wait(&bar); if(x->t==0) T[rep]=now()-t0; }
  return 0;}
int main(int argc,char**argv){
  if(argc>1) VARIANT=atoi(argv[1]); if(argc>2) NT=atoi(argv[2]); if(argc>3) COPIES=atoi(argv[3]); if(argc>4) PF=atoi(argv[4]);
  W=malloc(sizeof(float*)*COPIES); for(int c=0;c<COPIES;c++){ W[c]=aligned_alloc(64,(size_t)N*K*4); for(size_t i=0;i<(size_t)N*K;i++) W[c][i]=(float)((i*7+c)%13)*0.01f; }
  X=aligned_alloc(64,ROWS*K*4); for(int i=0;i<ROWS*K;i++) X[i]=0.001f*i; Y=calloc(4096,4);
  int reps=COPIES*3; REPS=reps; T=calloc(reps,8); double best=1e9, tot=0;
  pthread_barrier_init(&bar,0,NT); pthread_t th[8]; Arg a[8];
  for(int t=0;t<NT;t++){a[t].t=t; pthread_create(&th[t],0,worker,&a[t]);} for(int t=0;t<NT;t++) pthread_join(th[t],0);
  for(int rep=COPIES;rep<reps;rep++){ tot+=T[rep]; if(T[rep]<best) best=T[rep]; } reps-=COPIES;
  double bytes=(double)N*K*4;
  printf("variant %d threads %d copies %d pf %d: mean %.1f GB/s best %.1f GB/s\n",VARIANT,NT,COPIES,PF,bytes*reps/tot/1e9,bytes/best/1e9);
}
