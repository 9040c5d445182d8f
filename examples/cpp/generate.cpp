// The C example (../c/generate.c) with the C++ face of the API (heterospec/heterospec.hpp):
// RAII handles, std::string, exceptions. Ctrl-C cancels the generation.
//
//   generate MODEL.gguf [PROMPT] [-n N]
#include <heterospec/heterospec.hpp>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>

static hs::Engine * running = nullptr;

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " MODEL.gguf [PROMPT] [-n N]\n";
        return 2;
    }
    std::string prompt = "def fibonacci(n):";
    hs_generate_params params = hs_generate_default_params();
    params.max_tokens = 64;
    params.sampling.temperature = 0.0f;
    for (int i = 2; i < argc; ++i) {
        if (!std::strcmp(argv[i], "-n") && i + 1 < argc) params.max_tokens = std::atoi(argv[++i]);
        else prompt = argv[i];
    }
    try {
        hs::Engine engine(argv[1]);
        running = &engine;
        std::signal(SIGINT, [](int) { running->cancel(); });
        hs::Result r = engine.generate(prompt, params, [](int32_t, const std::string & piece) {
            std::cout << piece << std::flush;
            return true;
        });
        std::cerr << "\n[" << r.finish_reason() << "] " << r.stats().generated_tokens << " tokens, "
                  << r.stats().tokens_per_second << " tok/s\n";
    } catch (const hs::Error & e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
