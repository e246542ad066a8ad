/*
 * llama.cpp reads one of our GGUF exports, tokenizes a text file and prints, per position, the log-prob of the
 * next token, as JSON {"ids": [...], "target_logp": [...]} (docs/export.md, "Checked with llama.cpp").
 *
 *   L=/tmp/llama.cpp   # llama.cpp's source (checked at ggml-org/llama.cpp c392e50): src, include, ggml, cmake, common
 *   cmake -S $L -B $L/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
 *         -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMON=OFF -DGGML_OPENMP=OFF
 *   cmake --build $L/build -j2 --target llama
 *   cc -O2 scripts/llamacpp_logprobs.c -I$L/include -I$L/ggml/include -L$L/build/bin -lllama -lggml -lggml-base -lm \
 *      -o /tmp/llamacpp_logprobs
 *   LD_LIBRARY_PATH=$L/build/bin /tmp/llamacpp_logprobs OUT/model.gguf text.txt
 *
 * The KV cache is float32 here: llama.cpp's default float16 cache alone moves SmolLM2's log-probs by ~3e-3.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llama.h"

int main(int argc, char ** argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s MODEL.gguf TEXT_FILE\n", argv[0]); return 2; }
    FILE * f = fopen(argv[2], "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", argv[2]); return 2; }
    static char text[1 << 16];
    size_t n_text = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n_text] = 0;
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    llama_token tokens[4096];
    int n = llama_tokenize(vocab, text, (int) n_text, tokens, 4096, true, false);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512; cp.n_batch = 512; cp.n_ubatch = 512; cp.n_threads = 1; cp.n_threads_batch = 1; cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32;  // default f16 KV cache rounds keys/values
    struct llama_context * ctx = llama_init_from_model(model, cp);
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = tokens[i]; batch.pos[i] = i; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = 0; batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    int n_vocab = llama_vocab_n_tokens(vocab);
    printf("{\"ids\": [");
    for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", tokens[i]);
    printf("], \"target_logp\": [");
    for (int i = 0; i + 1 < n; i++) {
        const float * l = llama_get_logits_ith(ctx, i);
        double mx = -1e30, s = 0;
        for (int v = 0; v < n_vocab; v++) mx = l[v] > mx ? l[v] : mx;
        for (int v = 0; v < n_vocab; v++) s += exp(l[v] - mx);
        printf("%s%.7f", i ? ", " : "", l[tokens[i + 1]] - mx - log(s));
    }
    printf("]}\n");
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
