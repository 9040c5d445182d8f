/* Streams a generation to stdout through the C API; Ctrl-C cancels it.
 *
 *   generate MODEL.gguf [PROMPT] [-md DRAFT.gguf] [-n N] [-t THREADS] [--temp T]
 *
 * Build against an installed libheterospec (see CMakeLists.txt here, or
 * `cc generate.c $(pkg-config --cflags --libs heterospec)`). */
#include <heterospec/heterospec.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static hs_engine * engine = NULL;

static void on_sigint(int sig) {
    (void) sig;
    hs_cancel(engine); /* safe from any thread; the generation ends at its next step */
}

static bool print_piece(int32_t token, const char * piece, size_t len, void * user_data) {
    (void) token;
    (void) user_data;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return true;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [PROMPT] [-md DRAFT.gguf] [-n N] [-t THREADS] [--temp T]\n", argv[0]);
        return 2;
    }
    if (atoi(hs_version()) != HS_VERSION_MAJOR) { /* same major version: the same ABI */
        fprintf(stderr, "libheterospec %s does not match this header (%s)\n", hs_version(), HS_VERSION);
        return 1;
    }
    hs_engine_params ep = hs_engine_default_params();
    hs_generate_params gp = hs_generate_default_params();
    ep.target.path = argv[1];
    const char * prompt = "def fibonacci(n):";
    gp.max_tokens = 64;
    gp.sampling.temperature = 0.0f;
    for (int i = 2; i < argc; ++i) {
        const char * next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "-md") && next) { ep.draft.path = next; ++i; }
        else if (!strcmp(argv[i], "-n") && next) { gp.max_tokens = atoi(next); ++i; }
        else if (!strcmp(argv[i], "-t") && next) { ep.n_threads = atoi(next); ++i; }
        else if (!strcmp(argv[i], "--temp") && next) { gp.sampling.temperature = (float) atof(next); ++i; }
        else prompt = argv[i];
    }

    if (hs_engine_create(&ep, &engine) != HS_OK) {
        fprintf(stderr, "error: %s\n", hs_last_error());
        return 1;
    }
    signal(SIGINT, on_sigint);

    hs_result * result = NULL;
    if (hs_generate(engine, prompt, &gp, print_piece, NULL, &result) != HS_OK) {
        fprintf(stderr, "error: %s\n", hs_last_error());
        hs_engine_free(engine);
        return 1;
    }
    hs_stats st = hs_result_stats(result);
    fprintf(stderr, "\n[%s] %d tokens, %.1f tok/s, mode %s, %.2f tokens per step\n", hs_result_finish_reason(result),
            st.generated_tokens, st.tokens_per_second, st.mode, st.mean_accepted);
    hs_result_free(result);
    hs_engine_free(engine);
    return 0;
}
