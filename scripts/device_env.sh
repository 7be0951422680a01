# Source this on the GPU machine: points CMake and pkg-config at build dependencies
# carried in .devdeps/ (cJSON, PCRE2, zlib unpacked from Debian packages) when the
# machine has no package access. Harmless elsewhere.
_fe_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.devdeps/root/usr"
if [ -d "$_fe_root" ]; then
  export PKG_CONFIG_PATH="$_fe_root/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export CMAKE_PREFIX_PATH="$_fe_root${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
