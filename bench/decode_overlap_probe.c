// Probe: can the idle core hide part of a decode step's weight stream behind the step's
// single-threaded glue? A batch-8 decode step of the SmolLM2-135M shape is simulated as its
// 121 weight matrices (packed k-major panels, f32, 538 MB) multiplied by 8 rows on 2 threads
// (an AVX-512 8 × 3 block per panel group, groups taken from a shared counter), each matrix
// preceded by GLUE_US microseconds of single-threaded work on L1-resident data (the norms,
// RoPE, KV append and adds of the real step) while the other thread either waits (MODE 0) or
// reads ahead into the next matrix until the glue ends (MODE 1: plain loads, 2: prefetcht0,
// 3: prefetcht2). SPIN_US: how long the waiting thread spins before sleeping on a futex (the
// cost of waking a parked pool thread). BENCHMARKS.md ("Where a batch-8 step goes by timers")
// quotes its figures.
//
//   gcc -O3 -mavx512f -mfma -pthread -o /tmp/overlap bench/decode_overlap_probe.c
//   /tmp/overlap MODE [GLUE_US=28] [STEPS=40] [PF_LIMIT_BYTES] [SPIN_US=forever]
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
static double SPIN_US=1e9; static atomic_int sleeping;
static void fwait(atomic_int*a,int v){syscall(SYS_futex,a,FUTEX_WAIT_PRIVATE,v,0,0,0);}
static void fwake(atomic_int*a){syscall(SYS_futex,a,FUTEX_WAKE_PRIVATE,1,0,0,0);}
#define PANEL 16
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { int n,k; float*data; } Mat;
static Mat *mats; static int NM;
static float X[8*1536]; static float Yout[8*49152];
static int MODE=0; static double GLUE_US=28; static long PF_LIMIT=1<<30;
static void k38(const float*p,const float*x,int k,float*tile,int C){
  __m512 acc[8][3]; for(int r=0;r<8;r++)for(int c=0;c<3;c++)acc[r][c]=_mm512_setzero_ps();
  for(int i=0;i<k;i++){ __m512 w[3]; for(int c=0;c<C;c++) w[c]=_mm512_loadu_ps(p+c*PANEL*k+i*PANEL);
    for(int c=C;c<3;c++) w[c]=_mm512_setzero_ps();
    for(int r=0;r<8;r++){ __m512 xb=_mm512_set1_ps(x[r*k+i]); for(int c=0;c<3;c++) acc[r][c]=_mm512_fmadd_ps(w[c],xb,acc[r][c]); } }
  for(int r=0;r<8;r++)for(int c=0;c<3;c++) _mm512_storeu_ps(tile+(r*3+c)*PANEL,acc[r][c]);
}
static atomic_int next_group; static atomic_int phase; static atomic_int done_count;
static atomic_int stop_pf; static atomic_long pf_bytes;
static volatile int cur_mat; static volatile int cur_kind; // 0 matmul, 1 glue
static void do_groups(int t){
  Mat*m=&mats[cur_mat]; int panels=m->n/PANEL; int groups=(panels+2)/3; float tile[24*PANEL];
  for(;;){ int g=atomic_fetch_add(&next_group,1); if(g>=groups) break; int p0=g*3; int C=panels-p0<3?panels-p0:3;
    k38(m->data+(long)p0*PANEL*m->k,X,m->k,tile,C); Yout[(g*7)%49152]+=tile[t];}
}
static float sink;
static void prefetch_next(int mi){
  if(mi>=NM) return; Mat*m=&mats[mi]; long bytes=(long)m->n*m->k*4; if(bytes>PF_LIMIT) bytes=PF_LIMIT;
  const char*p=(const char*)m->data; float s=0; long off=0;
  while(off<bytes && !atomic_load_explicit(&stop_pf,memory_order_relaxed)){
    for(int j=0;j<64 && off<bytes;j++,off+=64){ if(MODE==1) s+=*(const float*)(p+off); else if(MODE==2) _mm_prefetch(p+off,_MM_HINT_T0); else _mm_prefetch(p+off,_MM_HINT_T2);} }
  sink+=s; atomic_fetch_add(&pf_bytes,off);
}
static void glue(){ double t0=now(); float a=1; while((now()-t0)*1e6<GLUE_US){ for(int i=0;i<100;i++) a=a*0.999f+X[i]; } sink+=a; }
static void* worker(void*arg){ int last=0; for(;;){ int ph; double t0=now(); int it=0; while((ph=atomic_load(&phase))==last){ _mm_pause(); if((++it&63)==0 && (now()-t0)*1e6>SPIN_US){ atomic_store(&sleeping,1); if(atomic_load(&phase)==last) fwait(&phase,last); atomic_store(&sleeping,0);} } last=ph; if(ph<0) return 0;
    if(cur_kind==0) do_groups(1); else if(MODE) prefetch_next(cur_mat+1);
    atomic_fetch_add(&done_count,1);} }
static int ph_ctr=0;
static void run(int kind, int mi){ cur_kind=kind; cur_mat=mi; atomic_store(&next_group,0); atomic_store(&stop_pf,0); atomic_store(&done_count,0);
  atomic_store(&phase,++ph_ctr); if(atomic_load(&sleeping)) fwake(&phase);
  if(kind==0) do_groups(0); else { glue(); atomic_store(&stop_pf,1);} while(atomic_load(&done_count)<1) _mm_pause(); }
static Mat mk(int n,int k){ Mat m={n,k,aligned_alloc(64,(size_t)n*k*4)}; for(long i=0;i<(long)n*k;i++) m.data[i]=(i%97)*1e-3f; return m; }
int main(int argc,char**argv){
  MODE=argc>1?atoi(argv[1]):0; GLUE_US=argc>2?atof(argv[2]):28; int steps=argc>3?atoi(argv[3]):40; PF_LIMIT=argc>4?atol(argv[4]):(1L<<30); SPIN_US=argc>5?atof(argv[5]):1e9;
  NM=30*4+1; mats=malloc(sizeof(Mat)*NM); int i=0;
  for(int l=0;l<30;l++){ mats[i++]=mk(960,576); mats[i++]=mk(576,576); mats[i++]=mk(3072,576); mats[i++]=mk(576,1536);} mats[i++]=mk(49152,576);
  for(int j=0;j<8*1536;j++) X[j]=1e-3f*j;
  pthread_t th; pthread_create(&th,0,worker,0);
  double best=1e9,sum=0; int cnt=0;
  for(int s=0;s<steps;s++){ double t0=now(); atomic_store(&pf_bytes,0);
    for(int m=0;m<NM;m++){ run(1,m); run(0,m); }
    double dt=now()-t0; if(s>=3){sum+=dt;cnt++; if(dt<best)best=dt;}
    if(s==steps-1) fprintf(stderr,"prefetched %.1f MB/step\n",atomic_load(&pf_bytes)/1e6);
  }
  printf("mode %d glue %.0fus: mean %.2f ms best %.2f ms per step (glue total %.2f ms)\n",MODE,GLUE_US,sum/cnt*1e3,best*1e3,GLUE_US*NM/1e3);
  atomic_store(&phase,-1); return 0;
}
