// ANVIL_UNDER_ASAN: defined where the tests are built with AddressSanitizer
// (GCC says so with a macro, clang with a feature).
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define ANVIL_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ANVIL_UNDER_ASAN 1
#endif
#endif
