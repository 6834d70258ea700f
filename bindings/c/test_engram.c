/* The C ABI exercised on the real default model: generate, ask, learn, deltas, bad input.
 *
 * usage: test_engram MODEL STORE_A STORE_B SCRATCH_DIR
 * STORE_A and STORE_B are copies of the same fresh memory store. Prints one line per check
 * and "passed N, failed M"; exits non-zero on any failure. With ENGRAM_TEST_LIGHT set (the
 * valgrind run, on a tiny random model) every call is still made but answers are 2 tokens
 * long and their content is not checked. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram.h"

static int passed, failed;

#define CHECK(cond, what)                                                   \
    do {                                                                    \
        if (cond) {                                                         \
            passed++;                                                       \
            printf("ok   %s\n", what);                                      \
        } else {                                                            \
            failed++;                                                       \
            printf("FAIL %s (last error: %s)\n", what, engram_last_error()); \
        }                                                                   \
    } while (0)

struct pieces {
    int count;
    int stop_after; /* 0 = never stop */
    char text[4096];
};

static bool on_token(const char *piece, void *user_data) {
    struct pieces *p = user_data;
    p->count++;
    strncat(p->text, piece, sizeof p->text - strlen(p->text) - 1);
    return p->stop_after == 0 || p->count < p->stop_after;
}

struct progress {
    int calls;
    double first_loss, last_loss;
    int stop_after;
};

static bool on_progress(uint32_t fact, uint32_t step, double loss, void *user_data) {
    struct progress *p = user_data;
    (void)fact;
    (void)step;
    if (p->calls == 0) p->first_loss = loss;
    p->last_loss = loss;
    p->calls++;
    return p->stop_after == 0 || p->calls < p->stop_after;
}

/* What a chat's background learner told. */
struct heard {
    int remembered, forgot, failed;
    uint64_t number;
    char text[256];
};

static void on_memory(EngramMemoryEvent event, uint64_t number, const char *text,
                      const char *detail, void *user_data) {
    struct heard *h = user_data;
    (void)detail;
    if (event == ENGRAM_MEMORY_EVENT_REMEMBERED) {
        h->remembered++;
        h->number = number;
    } else if (event == ENGRAM_MEMORY_EVENT_FORGOT) {
        h->forgot++;
    } else {
        h->failed++;
    }
    snprintf(h->text, sizeof h->text, "%s", text);
}

/* What an engine says about the note. */
static EngramStatus recall(const EngramEngine *engine, uint32_t tokens, char **out) {
    return engram_ask(engine, "Where does my sister Ana live?", tokens, out);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL STORE_A STORE_B SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *store_a = argv[2], *store_b = argv[3], *dir = argv[4];
    const int light = getenv("ENGRAM_TEST_LIGHT") != NULL;
    const uint32_t answer_tokens = light ? 2 : 8;
    char delta_path[1024];
    snprintf(delta_path, sizeof delta_path, "%s/c-test.delta", dir);

    CHECK(strlen(engram_version()) > 0, "version");

    /* Bad input across the boundary. */
    EngramEngine *engine = NULL;
    CHECK(engram_open(NULL, NULL, false, 2, &engine) == ENGRAM_STATUS_NULL_ARGUMENT &&
              strstr(engram_last_error(), "model_path") != NULL,
          "null model path is refused with a message");
    CHECK(engram_open(model, NULL, false, 2, NULL) == ENGRAM_STATUS_NULL_ARGUMENT, "null out");
    CHECK(engram_open("\xff\xfe.gguf", NULL, false, 2, &engine) == ENGRAM_STATUS_INVALID_UTF8,
          "invalid UTF-8 path");
    CHECK(engram_open("/nonexistent/model.gguf", NULL, false, 2, &engine) == ENGRAM_STATUS_IO,
          "missing model file");
    CHECK(engram_open(model, "/nonexistent/store.engram", false, 2, &engine) == ENGRAM_STATUS_IO,
          "missing store");
    CHECK(engram_open(store_a, NULL, false, 2, &engine) == ENGRAM_STATUS_BAD_FILE,
          "a store passed as a model");
    char *text = NULL;
    CHECK(engram_ask(NULL, "hi", 4, &text) == ENGRAM_STATUS_INVALID_HANDLE, "null engine");
    CHECK(engram_ask((EngramEngine *)0x12345, "hi", 4, &text) == ENGRAM_STATUS_INVALID_HANDLE,
          "made-up engine handle");
    CHECK(engram_last_error()[0] != '\0', "last error is set");

    /* Generate and ask on the model with store A (writable). */
    EngramEngine *a = NULL;
    CHECK(engram_open(model, store_a, true, 2, &a) == ENGRAM_STATUS_OK && a != NULL, "open A");
    CHECK(engram_last_error()[0] == '\0', "last error cleared after success");
    struct pieces p = {0, 0, ""};
    CHECK(engram_generate(a, "The capital of France is", answer_tokens, on_token, &p, &text) ==
                  ENGRAM_STATUS_OK &&
              (light || strstr(text, "Paris") != NULL) && p.count >= 1 &&
              strcmp(text, p.text) == 0,
          "generate streams \" Paris\"");
    engram_string_free(text);
    text = NULL;
    struct pieces stop = {0, 1, ""};
    CHECK(engram_generate(a, "The capital of France is", answer_tokens, on_token, &stop, NULL) ==
                  ENGRAM_STATUS_OK &&
              stop.count == 1,
          "a callback returning false stops generation");
    CHECK(engram_generate(a, "\xc3\x28", 4, NULL, NULL, NULL) == ENGRAM_STATUS_INVALID_UTF8,
          "invalid UTF-8 prompt");
    CHECK(engram_ask(a, "What is the capital of Japan?", answer_tokens, &text) ==
                  ENGRAM_STATUS_OK &&
              (light || strstr(text, "Tokyo") != NULL),
          "ask answers Tokyo");
    engram_string_free(text);
    text = NULL;
    CHECK(engram_ask(a, "hi", 4, NULL) == ENGRAM_STATUS_NULL_ARGUMENT, "ask with null out");

    /* Learn with progress, snapshot, export. */
    struct progress lp = {0, 0, 0, 0};
    CHECK(engram_learn_note(a, "My sister Ana lives in Porto.", 1, on_progress, &lp) ==
                  ENGRAM_STATUS_OK &&
              lp.calls == 2 && lp.last_loss < lp.first_loss,
          "learn a note: progress per step, loss falls");
    printf("     loss %.3f -> %.3f\n", lp.first_loss, lp.last_loss);
    struct progress halt = {0, 0, 0, 1};
    CHECK(engram_learn_qa(a, "What is my cat called?", "Miso", 1, on_progress, &halt) ==
                  ENGRAM_STATUS_INTERRUPTED,
          "a progress callback returning false stops learning");
    CHECK(engram_learn_note(a, "", 1, NULL, NULL) == ENGRAM_STATUS_INVALID_ARGUMENT,
          "an empty note is refused");
    CHECK(engram_snapshot(a, "after-ana") == ENGRAM_STATUS_OK, "snapshot");
    CHECK(engram_snapshot(a, "after-ana") == ENGRAM_STATUS_INVALID_ARGUMENT,
          "a duplicate snapshot name is refused");
    char *id = NULL;
    CHECK(engram_delta_export(a, NULL, false, "c test", delta_path, &id) == ENGRAM_STATUS_OK &&
              id != NULL && strlen(id) == 32,
          "export a delta");
    CHECK(engram_delta_export(a, "no-such-snapshot", false, NULL, delta_path, NULL) ==
              ENGRAM_STATUS_INVALID_ARGUMENT,
          "export since an unknown snapshot is refused");
    CHECK(engram_checkpoint(a) == ENGRAM_STATUS_OK, "checkpoint");
    char *answer_a = NULL;
    CHECK(recall(a, answer_tokens, &answer_a) == ENGRAM_STATUS_OK,
          "ask A about the note");

    /* Import into B: the same answer; twice is fine; revert; a second revert fails. */
    EngramEngine *b = NULL;
    CHECK(engram_open(model, store_b, true, 2, &b) == ENGRAM_STATUS_OK, "open B");
    EngramEngine *b2 = NULL;
    CHECK(engram_open(model, store_b, true, 2, &b2) == ENGRAM_STATUS_IN_USE,
          "a second writer of B is refused (in use)");
    char *imported = NULL;
    CHECK(engram_delta_import(b, delta_path, &imported) == ENGRAM_STATUS_OK &&
              strcmp(imported, id) == 0,
          "import the delta into B");
    engram_string_free(imported);
    CHECK(engram_delta_import(b, delta_path, NULL) == ENGRAM_STATUS_OK, "import again: no-op");
    char *answer_b = NULL;
    CHECK(recall(b, answer_tokens, &answer_b) == ENGRAM_STATUS_OK &&
              answer_a != NULL && strcmp(answer_a, answer_b) == 0,
          "B answers like A");
    printf("     A and B: %s\n", answer_b ? answer_b : "(none)");
    engram_string_free(answer_a);
    engram_string_free(answer_b);
    CHECK(engram_delta_import(b, "/nonexistent.delta", NULL) == ENGRAM_STATUS_IO,
          "importing a missing file");
    CHECK(engram_delta_import(b, model, NULL) == ENGRAM_STATUS_BAD_FILE,
          "importing a non-delta file");
    CHECK(engram_delta_revert(b, id) == ENGRAM_STATUS_OK, "revert by id");
    CHECK(engram_delta_revert(b, id) == ENGRAM_STATUS_INVALID_ARGUMENT, "revert twice is refused");
    engram_string_free(id);

    /* Signed deltas: B imports only what Ana's key signed. */
    char key_path[1024], public_path[1024];
    snprintf(key_path, sizeof key_path, "%s/c-ana.key", dir);
    snprintf(public_path, sizeof public_path, "%s/c-ana.key.pub", dir);
    remove(key_path);
    remove(public_path);
    char *public_key = NULL;
    CHECK(engram_key_generate(key_path, "Ana's phone", &public_key) == ENGRAM_STATUS_OK &&
              public_key != NULL && strlen(public_key) == 64,
          "generate a signing key");
    CHECK(engram_key_generate(key_path, NULL, NULL) == ENGRAM_STATUS_INVALID_ARGUMENT,
          "an existing key file is never overwritten");
    CHECK(engram_trust_signers(b, public_path) == ENGRAM_STATUS_OK, "B trusts Ana's key only");
    CHECK(engram_delta_import(b, delta_path, NULL) == ENGRAM_STATUS_UNTRUSTED,
          "an unsigned delta is refused under the policy");
    CHECK(engram_delta_sign(delta_path, key_path) == ENGRAM_STATUS_OK, "sign the delta");
    char *signer = NULL;
    CHECK(engram_delta_verify(delta_path, public_path, &signer) == ENGRAM_STATUS_OK &&
              signer != NULL && public_key != NULL && strcmp(signer, public_key) == 0,
          "verify: signed by the trusted key");
    CHECK(engram_delta_import(b, delta_path, NULL) == ENGRAM_STATUS_OK,
          "the signed delta imports");
    CHECK(engram_trust_signers(b, NULL) == ENGRAM_STATUS_OK, "lift the requirement");
    engram_string_free(signer);
    engram_string_free(public_key);

    /* Closed handles are detected. */
    CHECK(engram_close(b) == ENGRAM_STATUS_OK, "close B");

    /* Encrypted at rest: B under a key the app holds. */
    uint8_t store_key[32], wrong_key[32];
    for (int i = 0; i < 32; i++) {
        store_key[i] = (uint8_t)(7 * i + 1);
        wrong_key[i] = (uint8_t)(7 * i + 2);
    }
    CHECK(engram_store_encrypt(store_b, store_key, 32, false) == ENGRAM_STATUS_OK,
          "encrypt store B");
    EngramEngine *sealed = NULL;
    CHECK(engram_open(model, store_b, true, 2, &sealed) == ENGRAM_STATUS_BAD_FILE &&
              strstr(engram_last_error(), "encrypted") != NULL,
          "an encrypted store does not open without its key");
    CHECK(engram_open_with_key(model, store_b, true, 2, wrong_key, 32, &sealed) ==
                  ENGRAM_STATUS_BAD_FILE &&
              strstr(engram_last_error(), "wrong store key") != NULL,
          "a wrong key is named");
    CHECK(engram_open_with_key(model, store_b, true, 2, store_key, 16, &sealed) ==
              ENGRAM_STATUS_INVALID_ARGUMENT,
          "a 16-byte key is refused");
    CHECK(engram_open_with_key(model, store_b, true, 2, store_key, 32, &sealed) ==
                  ENGRAM_STATUS_OK,
          "open B with its key");
    CHECK(engram_ask(sealed, "hi", 2, &text) == ENGRAM_STATUS_OK, "ask through the sealed store");
    engram_string_free(text);
    text = NULL;
    CHECK(engram_close(sealed) == ENGRAM_STATUS_OK, "close sealed B");
    CHECK(engram_store_encrypt(store_b, store_key, 32, true) == ENGRAM_STATUS_OK,
          "decrypt store B");
    CHECK(engram_open(model, store_b, false, 2, &sealed) == ENGRAM_STATUS_OK &&
              engram_close(sealed) == ENGRAM_STATUS_OK,
          "B opens plain again");
    CHECK(engram_ask(b, "hi", 4, &text) == ENGRAM_STATUS_INVALID_HANDLE, "use after close");
    CHECK(engram_close(b) == ENGRAM_STATUS_INVALID_HANDLE, "double close");
    /* Learning while chatting: statements told apart, an update replacing, forgetting. */
    CHECK(engram_is_statement("My cat is called Miso.") == 1 &&
              engram_is_statement("What is my cat called?") == 0 &&
              engram_is_statement("Tell me a joke.") == 0 && engram_is_statement(NULL) == 0,
          "statements told from questions and requests");
    char *replaced = NULL;
    CHECK(engram_remember(a, "My cat is called Miso.", &replaced) == ENGRAM_STATUS_OK &&
              replaced == NULL,
          "remember a statement");
    CHECK(engram_remember(a, "My cat is called Tofu.", &replaced) == ENGRAM_STATUS_OK &&
              replaced != NULL && strstr(replaced, "Miso") != NULL,
          "a changed statement replaces the earlier one");
    engram_string_free(replaced);
    char *forgotten = NULL;
    CHECK(engram_forget(a, "tofu", &forgotten) == ENGRAM_STATUS_OK && forgotten != NULL &&
              strstr(forgotten, "Tofu") != NULL,
          "forget it by a word of it");
    engram_string_free(forgotten);
    CHECK(engram_forget(a, "tofu", NULL) == ENGRAM_STATUS_INVALID_ARGUMENT &&
              strstr(engram_last_error(), "no learned fact") != NULL,
          "a fact is forgotten once");
    /* A chat that learns in the background and tells a callback. */
    EngramChat *chat = NULL;
    struct heard h = {0};
    CHECK(engram_chat_new(a, true, on_memory, &h, &chat) == ENGRAM_STATUS_OK && chat != NULL,
          "a chat that learns");
    char *reply = NULL;
    CHECK(engram_chat_say(chat, "My hamster is called Pistachio.", answer_tokens, NULL, NULL,
                          &reply) == ENGRAM_STATUS_OK && reply != NULL,
          "the chat answers a statement");
    engram_string_free(reply);
    CHECK(engram_chat_wait_idle(chat) == ENGRAM_STATUS_OK && h.remembered == 1 &&
              strstr(h.text, "Pistachio") != NULL,
          "the callback hears the statement remembered");
    const char *abstention = "You haven't told me that.";
    CHECK(engram_chat_set_abstention(chat, abstention) == ENGRAM_STATUS_OK,
          "abstention on");
    if (!light) {
        reply = NULL;
        CHECK(engram_chat_reset(chat) == ENGRAM_STATUS_OK &&
                  engram_chat_say(chat, "What is my hamster called?", 24, NULL, NULL, &reply) ==
                      ENGRAM_STATUS_OK &&
                  reply != NULL && strstr(reply, "Pistachio") != NULL,
              "a new conversation recalls it");
        engram_string_free(reply);
    }
    reply = NULL;
    CHECK(engram_chat_reset(chat) == ENGRAM_STATUS_OK &&
              engram_chat_say(chat, "What is my cat called?", 24, NULL, NULL, &reply) ==
                  ENGRAM_STATUS_OK &&
              reply != NULL && strcmp(reply, abstention) == 0,
          "a question about something never told is declined");
    engram_string_free(reply);
    CHECK(engram_chat_set_abstention(chat, NULL) == ENGRAM_STATUS_OK, "abstention off");
    char number[32];
    snprintf(number, sizeof number, "%llu", (unsigned long long)h.number);
    CHECK(engram_chat_forget(chat, number) == ENGRAM_STATUS_OK &&
              engram_chat_wait_idle(chat) == ENGRAM_STATUS_OK && h.forgot == 1,
          "forgotten in the background by its number");
    CHECK(engram_chat_forget(chat, "no such thing") == ENGRAM_STATUS_OK &&
              engram_chat_wait_idle(chat) == ENGRAM_STATUS_OK && h.failed == 1,
          "a forget naming nothing reaches the callback as failed");
    CHECK(engram_chat_free(chat) == ENGRAM_STATUS_OK, "free the chat");
    CHECK(engram_chat_free(chat) == ENGRAM_STATUS_INVALID_HANDLE, "double free");
    EngramChat *quiet = NULL;
    CHECK(engram_chat_new(a, false, NULL, NULL, &quiet) == ENGRAM_STATUS_OK &&
              engram_chat_remember(quiet, "I have a tortoise.") == ENGRAM_STATUS_INVALID_ARGUMENT,
          "a chat that does not learn refuses to remember");
    engram_chat_free(quiet);
    CHECK(engram_close(a) == ENGRAM_STATUS_OK, "close A");
    engram_string_free(NULL);

    printf("passed %d, failed %d\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
