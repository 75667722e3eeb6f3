/* A dealer desktop app embedding the fieldsync replica through the C ABI.
 *
 * Build (after `cargo build --release -p fieldsync-ffi`):
 *   cc examples/c/embed.c -Iclient-lib/ffi/include -Ltarget/release -lfieldsync -o embed
 *   LD_LIBRARY_PATH=target/release ./embed /tmp/dealer.db
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fieldsync.h"

static int fail(const char *what) {
    fprintf(stderr, "%s failed: %s\n", what, fs_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "dealer.db";
    FsClient *c = fs_open(path);
    if (!c) return fail("fs_open");

    char *id = fs_create(c, "customer",
        "{\"scope\":\"north-mines\",\"name\":\"Baotou Mining Co\",\"phone\":\"+86 472 555 0101\"}");
    if (!id) return fail("fs_create");
    printf("created customer %s\n", id);

    if (fs_edit(c, id, "{\"kind\":\"customer\",\"edit\":{\"set\":[\"industry\",\"mining\"]}}") != 0)
        return fail("fs_edit");
    /* A rep may not set the approved credit limit: the edit is refused with a reason. */
    if (fs_edit(c, id, "{\"kind\":\"customer\",\"edit\":{\"set_credit_limit\":{\"amount_minor\":100,\"currency\":\"CNY\"}}}") == 0)
        return fail("refusing a rep's credit limit");
    printf("refused as expected: %s\n", fs_last_error());

    char quote_json[256];
    snprintf(quote_json, sizeof quote_json,
        "{\"customer_id\":\"%s\",\"currency\":\"CNY\",\"quote_no\":\"D-1\",\"valid_until\":null}", id);
    char *quote = fs_create(c, "quote", quote_json);
    if (!quote) return fail("fs_create quote");
    if (fs_edit(c, quote, "{\"kind\":\"quote\",\"edit\":{\"add_line\":[\"l1\",{\"sku\":\"WL-980\",\"qty\":2,\"unit_price_minor\":125000000}]}}") != 0)
        return fail("fs_edit add_line");

    char *doc = fs_get(c, id);
    if (!doc) return fail("fs_get");
    printf("customer: %s\n", doc);

    char *rows = fs_query(c, "SELECT name, industry FROM customers ORDER BY name");
    if (!rows) return fail("fs_query");
    printf("customers: %s\n", rows);

    char *totals = fs_query(c, "SELECT quote_no, total_minor, currency FROM quotes");
    if (!totals) return fail("fs_query quotes");
    printf("quotes: %s\n", totals);

    if (fs_query(c, "DELETE FROM customers") != NULL) return fail("refusing a write through fs_query");

    /* A signed delivery receipt attached to the customer: stored beside the replica, read
     * back verified, and waiting to upload at the next sync. */
    char receipt[512];
    snprintf(receipt, sizeof receipt, "%s.receipt.pdf", path);
    FILE *f = fopen(receipt, "wb");
    if (!f) return fail("fopen");
    for (int i = 0; i < 100000; i++) fputc(i % 251, f);
    fclose(f);
    char *att = fs_attach_file(c, id, receipt, "signed on delivery");
    if (!att) return fail("fs_attach_file");
    printf("attached: %s\n", strstr(att, "\"media_type\"") ? "application/pdf" : att);
    fs_string_free(att);
    char *list = fs_attachments(c, id);
    if (!list) return fail("fs_attachments");
    const char *h = strstr(list, "\"hash\":\"");
    if (!h) return fail("no hash in the attachment list");
    char hash[65];
    memcpy(hash, h + 8, 64);
    hash[64] = '\0';
    fs_string_free(list);
    char copy[512];
    snprintf(copy, sizeof copy, "%s.copy.pdf", path);
    long long saved = fs_attachment_save(c, hash, copy);
    if (saved < 0) return fail("fs_attachment_save");
    printf("attachment saved: %lld bytes\n", saved);
    /* Asking for an attachment this computer holds changes nothing. */
    if (fs_attachment_fetch(c, id, hash, (uint64_t)saved) != 0) return fail("fs_attachment_fetch");
    char *files = fs_attachments_waiting(c);
    if (!files) return fail("fs_attachments_waiting");
    printf("attachments waiting: %s\n", files);
    fs_string_free(files);

    long long waiting = fs_outbox_len(c);
    if (waiting < 0) return fail("fs_outbox_len");
    printf("changes waiting for the relay: %lld\n", waiting);

    fs_string_free(totals);
    fs_string_free(rows);
    fs_string_free(doc);
    fs_string_free(quote);
    fs_string_free(id);
    fs_close(c);

    /* A laptop that travels keeps its replica encrypted: created under a passphrase (and the
     * OS keyring where there is one), opened only with it. */
    char secret_path[512];
    snprintf(secret_path, sizeof secret_path, "%s.encrypted.db", path);
    FsClient *e = fs_open_encrypted(secret_path, "a long passphrase");
    if (!e) return fail("fs_open_encrypted (new)");
    char *eid = fs_create(e, "customer", "{\"scope\":\"north-mines\",\"name\":\"Erdos Drilling\"}");
    if (!eid) return fail("fs_create (encrypted)");
    fs_string_free(eid);
    fs_close(e);
    if (fs_open_encrypted(secret_path, "not the passphrase") != NULL)
        return fail("refusing a wrong passphrase");
    printf("wrong passphrase refused: %s\n", fs_last_error());
    if (fs_change_passphrase(secret_path, "a long passphrase", "a new long passphrase") != 0)
        return fail("fs_change_passphrase");
    e = fs_open_encrypted(secret_path, "a new long passphrase");
    if (!e) return fail("fs_open_encrypted (new passphrase)");
    char *erows = fs_query(e, "SELECT name FROM customers");
    if (!erows) return fail("fs_query (encrypted)");
    printf("encrypted customers: %s\n", erows);
    char *lease = fs_lease(e);
    if (!lease) return fail("fs_lease");
    printf("offline lease: %s\n", lease);
    fs_string_free(lease);
    fs_string_free(erows);
    fs_close(e);
    return 0;
}
