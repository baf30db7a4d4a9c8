package kinesql

import "database/sql"

// OpenDBForTest opens a connection pool for a config, for tests' own checks.
func OpenDBForTest(c Config) *sql.DB {
	db, err := openDB(c, false, false)
	if err != nil {
		panic(err)
	}
	return db
}
