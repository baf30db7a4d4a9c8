package rig

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
)

// Azurite is Microsoft's Azure Storage emulator (its blob service), run by Node.js.
type Azurite struct {
	Endpoint string // the account's blob service: http://127.0.0.1:PORT/ACCOUNT
	Account  string
	Key      string // the account's shared key (base64), random per server
	Process  *Process
}

// StartAzurite starts Azurite's blob service in memory with one account of its own
// (a random key, not the emulator's well-known one) and waits until it answers.
func StartAzurite(t testing.TB) *Azurite {
	t.Helper()
	RequireIntegration(t)
	bin := Tool(t, "azurite")
	dir := t.TempDir()
	port := FreePort(t)
	key := make([]byte, 64)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	a := &Azurite{Account: "vcsnaprig", Key: base64.StdEncoding.EncodeToString(key)}
	a.Endpoint = fmt.Sprintf("http://127.0.0.1:%d/%s", port, a.Account)
	a.Process = StartProcess(t, ProcSpec{
		Name: "azurite", Path: bin, Dir: dir,
		Args: []string{
			"--blobHost", "127.0.0.1", "--blobPort", fmt.Sprint(port),
			"--inMemoryPersistence", "--silent",
			"--disableTelemetry",    // it would send usage data out otherwise
			"--skipApiVersionCheck", // the SDK may speak a newer API version than this Azurite knows
		},
		Env: []string{"AZURITE_ACCOUNTS=" + a.Account + ":" + a.Key},
	})
	hc := &http.Client{Timeout: 2 * time.Second}
	WaitReady(t, time.Minute, "azurite", func(ctx context.Context) error {
		// Any answer (403 without credentials) means the blob service is up.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.Endpoint+"?comp=list", nil)
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}, a.Process)
	hc.CloseIdleConnections()
	return a
}

// CreateContainer creates a container.
func (a *Azurite) CreateContainer(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cred, err := container.NewSharedKeyCredential(a.Account, a.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := container.NewClientWithSharedKeyCredential(a.Endpoint+"/"+name, cred, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, nil); err != nil {
		t.Fatalf("create container %s: %v", name, err)
	}
}

// Stop stops the server (idempotent).
func (a *Azurite) Stop() { a.Process.Stop() }

// ContainerSAS returns a SAS token (a query string) for a container, valid for an
// hour, with the permissions vcsnap needs: read, add, create, write, delete and list.
func (a *Azurite) ContainerSAS(t testing.TB, name string) string {
	t.Helper()
	cred, err := container.NewSharedKeyCredential(a.Account, a.Key)
	if err != nil {
		t.Fatal(err)
	}
	perms := sas.ContainerPermissions{Read: true, Add: true, Create: true, Write: true, Delete: true, List: true}
	q, err := sas.BlobSignatureValues{Protocol: sas.ProtocolHTTPSandHTTP, ExpiryTime: time.Now().Add(time.Hour).UTC(),
		Permissions: perms.String(), ContainerName: name}.SignWithSharedKey(cred)
	if err != nil {
		t.Fatal(err)
	}
	return q.Encode()
}
