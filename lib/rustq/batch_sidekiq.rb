# frozen_string_literal: true

module Rustq
  class Batch
    # Batches in a mixed fleet: Sidekiq processes on the same Redis run a batch's jobs and count
    # them as rustq-worker does. In the app's Sidekiq setup:
    #
    #   Sidekiq.configure_server do |config|
    #     Rustq::Batch::SidekiqMiddleware.install(config)
    #   end
    #
    # A job that succeeds (or that other middleware skips: Sidekiq counts that as done) is counted
    # once it returns; one that raises is counted as failed before Sidekiq's retry takes it (so
    # `:complete` can fire while it waits to be retried, as in Sidekiq Pro); one that dies is
    # counted by a death handler. Each count is one atomic step with the same writes as the
    # engine's (rustq_engine::batch::count_ran): set memberships, events stamped once, callback
    # jobs enqueued in that step. What Sidekiq itself does not promise stays so: a Sidekiq
    # process killed while running a job loses that job (its fetch took it off the queue), and
    # the batch then waits for it.
    class SidekiqMiddleware
      # Sidekiq's exceptions that stop a job without an outcome: it goes back to its queue.
      INTERRUPTS = %w[Sidekiq::Shutdown Sidekiq::Job::Interrupted Sidekiq::JobRetry::Skip].freeze

      # Counts a batch job that died (retries exhausted, or killed by sidekiq_retry_in).
      class Death
        def call(payload, _error)
          # `retry: false` is not a death in a batch: the job failed and is done (as in rustq-worker).
          return unless payload.is_a?(Hash) && payload["bid"] && payload["retry"] != false

          Native.batch_count(JSON.generate(payload), "died")
        end
      end

      # Adds the middleware (first in the chain, so it sees every job's outcome) and the death
      # handler to a Sidekiq server config (Sidekiq 7+'s config, or the Sidekiq module in 6.x).
      def self.install(config = ::Sidekiq)
        config.server_middleware do |chain|
          chain.remove(self)
          chain.prepend(self)
        end
        config.death_handlers.reject! { |handler| handler.is_a?(Death) }
        config.death_handlers << Death.new
        config
      end

      def call(_instance, payload, _queue)
        return yield unless payload["bid"]

        begin
          yield
        rescue Exception => e # rubocop:disable Lint/RescueException
          count(payload, "failed") unless interrupt?(e)
          raise
        end
        count(payload, "succeeded")
      end

      private

      def count(payload, ran)
        Native.batch_count(JSON.generate(payload), ran)
      rescue StandardError => e
        # Redis away: the job counts when it runs again (Sidekiq retries a job whose success
        # could not be counted, since this raises) or when it dies.
        Rustq.logger.error { "rustq: could not count batch #{payload["bid"]}'s job #{payload["jid"]} (#{ran}): #{e.class}: #{e.message}" }
        raise if ran == "succeeded"
      end

      def interrupt?(error)
        INTERRUPTS.any? { |name| Object.const_defined?(name) && error.is_a?(Object.const_get(name)) }
      rescue NameError
        false
      end
    end

    # Sidekiq's own pushes (a `Sidekiq::Job`'s perform_async, Sidekiq::Client, ActiveJob through
    # Sidekiq's adapter) made inside `Rustq::Batch#jobs` join the batch like rustq's: kept, and
    # written with it when the block ends. Prepended to Sidekiq::Client the first time a batch's
    # jobs block runs in a process that has Sidekiq.
    module SidekiqPushes
      def self.hook
        return if @hooked || !defined?(::Sidekiq::Client)

        ::Sidekiq::Client.prepend(self)
        @hooked = true
      end

      private

      def raw_push(payloads)
        return super unless Batch.collecting?

        Batch.collect(payloads, :payloads)
        true
      end
    end
  end
end
