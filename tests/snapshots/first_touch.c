/*
 * How much the first user-space access to a page costs when the page was
 * placed with UFFDIO_COPY, against a page written from user space.  On a
 * host with shadow paging (a PVM guest, say) the former takes a
 * hypervisor exit per page, which a lazily loaded TCG guest pays as it
 * first touches each page.  Not part of make check:
 *   gcc -O2 -o first_touch first_touch.c && ./first_touch
 */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#define N 65536
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static double touch(volatile char *m){double t=now();uint64_t s=0;for(long i=0;i<N;i++)s+=m[i*4096L+64];double d=now()-t;if(s==42)puts("");return d;}
int main(void){
  size_t len=(size_t)N*4096;
  char *src=aligned_alloc(4096,1<<20); memset(src,1,1<<20);
  /* user-space written */
  char *a=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  madvise(a,len,MADV_NOHUGEPAGE);
  double t=now(); for(long i=0;i<N;i+=256) memcpy(a+i*4096L,src,1<<20); double wa=now()-t;
  /* uffd placed */
  int uffd=syscall(SYS_userfaultfd,O_CLOEXEC); struct uffdio_api api={.api=UFFD_API}; ioctl(uffd,UFFDIO_API,&api);
  char *b=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  madvise(b,len,MADV_NOHUGEPAGE);
  struct uffdio_register r={.range={(uintptr_t)b,len},.mode=UFFDIO_REGISTER_MODE_MISSING}; ioctl(uffd,UFFDIO_REGISTER,&r);
  t=now(); for(long i=0;i<N;i+=256){struct uffdio_copy c={.dst=(uintptr_t)(b+i*4096L),.src=(uintptr_t)src,.len=1<<20}; if(ioctl(uffd,UFFDIO_COPY,&c)){perror("copy");return 1;}} double wb=now()-t;
  printf("place 256 MiB: memcpy %.0f ms (%.2f GB/s), UFFDIO_COPY 1 MiB runs %.0f ms (%.2f GB/s)\n",wa*1e3,len/wa/1e9,wb*1e3,len/wb/1e9);
  printf("first read of each page: memcpy-written %.3f us/page, UFFDIO_COPY-placed %.3f us/page\n",touch(a)/N*1e6,touch(b)/N*1e6);
  printf("second read:             memcpy-written %.3f us/page, UFFDIO_COPY-placed %.3f us/page\n",touch(a)/N*1e6,touch(b)/N*1e6);
  return 0;}
