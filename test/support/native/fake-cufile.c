/*
 * ABI-level test double for libcufile.so.0: the real symbol names and signatures (cufile.h), with
 * behaviour chosen by environment variables instead of the nvidia-fs driver.
 *   FAKE_CUFILE_OPEN=<n>     cuFileDriverOpen returns {n, 0} (default 0; 5001 = driver not initialised)
 *   FAKE_CUFILE_NVFS=<a.b>   nvfs major.minor in the properties (default 2.17; 0.0 = nvidia-fs absent)
 *   FAKE_CUFILE_NVME=0|1     dstatusflags bit 4, NVMe supported (default 1)
 *   FAKE_CUFILE_COMPAT=0|1   dcontrolflags bit 1, compat mode allowed (default 0)
 *   FAKE_CUFILE_PROPS=<n>    cuFileDriverGetProperties returns {n, 0} and writes nothing (default 0)
 *   FAKE_CUFILE_HANG=1       cuFileDriverOpen never returns
 *   FAKE_CUFILE_LOG=<file>   appends one line per call
 *   FAKE_CUFILE_TAIL=<n>     bytes of tail written after the nvfs fields (default 512); a value past
 *                            the probe's buffer makes this double overrun it, for the sanitizer test
 * The properties are written the way a newer library would: the leading nvfs fields, then a tail
 * the probe must not depend on.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  int err;
  int cu_err;
} CUfileError_t;

struct nvfs_props {
  unsigned int major_version;
  unsigned int minor_version;
  size_t poll_thresh_size;
  size_t max_direct_io_size;
  unsigned int dstatusflags;
  unsigned int dcontrolflags;
};

static int opened = 0;

static int env_int(const char *name, int fallback) {
  const char *v = getenv(name);
  return v != NULL && *v != '\0' ? atoi(v) : fallback;
}

static void trace(const char *call) {
  const char *path = getenv("FAKE_CUFILE_LOG");
  if (path == NULL) return;
  FILE *f = fopen(path, "a");
  if (f == NULL) return;
  fprintf(f, "%s\n", call);
  fclose(f);
}

CUfileError_t cuFileDriverOpen(void) {
  trace("cuFileDriverOpen");
  if (env_int("FAKE_CUFILE_HANG", 0)) {
    for (;;) pause();
  }
  CUfileError_t r = {env_int("FAKE_CUFILE_OPEN", 0), 0};
  if (r.err == 0) opened = 1;
  return r;
}

CUfileError_t cuFileDriverGetProperties(void *props) {
  trace("cuFileDriverGetProperties");
  CUfileError_t r = {opened ? env_int("FAKE_CUFILE_PROPS", 0) : 5001, 0};
  if (r.err != 0) return r;
  struct nvfs_props nvfs = {2, 17, 64, 16384, 0, 0};
  const char *version = getenv("FAKE_CUFILE_NVFS");
  if (version != NULL && sscanf(version, "%u.%u", &nvfs.major_version, &nvfs.minor_version) != 2) {
    nvfs.major_version = 0;
    nvfs.minor_version = 0;
  }
  if (env_int("FAKE_CUFILE_NVME", 1)) nvfs.dstatusflags |= 1u << 4;
  if (env_int("FAKE_CUFILE_COMPAT", 0)) nvfs.dcontrolflags |= 1u << 1;
  memcpy(props, &nvfs, sizeof nvfs);
  /* A tail like a newer release's (flags, counters, limits): 512 bytes the probe must not read. */
  memset((char *)props + sizeof nvfs, 0xA5, (size_t)env_int("FAKE_CUFILE_TAIL", 512));
  return r;
}

static CUfileError_t driver_close(const char *name) {
  trace(name);
  CUfileError_t r = {opened ? 0 : 5001, 0};
  opened = 0;
  return r;
}

CUfileError_t cuFileDriverClose(void) { return driver_close("cuFileDriverClose"); }
CUfileError_t cuFileDriverClose_v2(void) { return driver_close("cuFileDriverClose_v2"); }
